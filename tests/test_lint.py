import shutil
import subprocess
import sys

from .conftest import REPO


def test_ruff_clean():
    ruff = shutil.which('ruff') or [sys.executable, '-m', 'ruff']
    cmd = ([ruff] if isinstance(ruff, str) else ruff) + ['check', 'odamtrain', 'tools', 'tests',
                                                          'configs']
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
