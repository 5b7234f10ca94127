import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import odamtrain  # noqa: F401  (registers modules)
from odamtrain.datasets import make_synthetic_crowdhuman

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Where the detectors of the model tests run (odam_fixtures / zoo): the CPU in CI;
# ODAMTRAIN_TEST_DEVICE=cuda on a GPU machine. TF32 off there, so that the float32 oracles
# (one backward per prediction) are compared at float32 precision.
TEST_DEVICE = torch.device(os.environ.get('ODAMTRAIN_TEST_DEVICE', 'cpu'))
if TEST_DEVICE.type == 'cuda':
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """A small synthetic CrowdHuman (12 train, 4 val images)."""
    root = str(tmp_path_factory.mktemp('synthetic_crowdhuman'))
    make_synthetic_crowdhuman(root, num_train=12, num_val=4, seed=3)
    return root


def run_tool(*args, timeout=900, env=None):
    """Run ``python tools/<args>`` (or ``-m ...``) from the repo root; returns the process."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH')) if p)
    full_env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHONPATH=path, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, timeout=timeout,
                          capture_output=True, text=True)
