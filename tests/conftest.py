import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

# the tests use tiny tensors: one intra-op thread is faster and does not fight the other workers
torch.set_num_threads(1)
