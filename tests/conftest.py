import os
import sys

import torch

# tests import sibling fixture modules (op_family_models, fixtures/) directly
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
