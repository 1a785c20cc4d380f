"""SWEET with constant (PAPA) attention in its first segment: the two methods as one configuration.

Every head of the layers below the first exit uses the averaged attention matrices of a PAPA run
(no query, no key, no scores), inputs take PAPA's fixed 64-slot layout, and the rest is configs/sweet_demo.py.

Command:   python train.py --config configs/papa_demo.py --workdir runs/papa_demo      # the averages
           python train.py --config configs/sweet_papa_demo.py --workdir runs/sweet_papa_demo
           python eval.py  --config configs/sweet_papa_demo.py --workdir runs/sweet_papa_demo
Hardware:  2 CPU cores, offline; time and result as configs/sweet_demo.py (see README).
"""

from configs import sweet_demo


def get_config():
  config = sweet_demo.get_config()
  config.model.constant_heads = 'first_segment'  # all 12 heads of layer 1 (exit_layers[0] = 1)
  config.model.constants_path = 'runs/papa_demo/papa/averages.npz'  # written by the papa_demo run
  # PAPA's fixed layout length without constants (0: plain tokenization; with constants, their L is used and
  # a nonzero value must equal it): a model with no constant heads set to L reads the same tokens as these.
  config.model.layout_length = 0
  return config
