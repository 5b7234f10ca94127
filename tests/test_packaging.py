"""odamtrain installs as a wheel into an environment that already has torch, mmcv and mmdet
(an MMDetection user's) and works there from outside the repository."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO

# run in the new environment, from outside the repository: a stock mmdet config, odamtrain
# registered through custom_imports, one image explained
USER_SCRIPT = textwrap.dedent('''
    import numpy as np
    from mmengine.hub import get_config
    cfg = get_config('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py')
    cfg.custom_imports = dict(imports=['odamtrain'], allow_failed_imports=False)
    cfg.model.backbone = dict(type='ResNet', depth=18, base_channels=8, num_stages=4,
                              out_indices=(0, 1, 2, 3), style='pytorch', init_cfg=None)
    cfg.model.neck.update(in_channels=[8, 16, 32, 64], out_channels=32)
    cfg.model.bbox_head.update(in_channels=32, feat_channels=32, num_classes=2)
    cfg.model.test_cfg.update(score_thr=0.0, max_per_img=5)
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(**cfg.custom_imports)
    import odamtrain
    from odamtrain.apis import explain_detector, init_detector
    model = init_detector(cfg, device='cpu')
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    result = explain_detector(model, image)
    maps = result.pred_instances.heatmaps
    assert maps.shape == (5, 96, 128) and float(maps.min()) >= 0 and float(maps.max()) > 0
    print(odamtrain.__file__)
''')


@pytest.mark.slow
def test_the_wheel_installs_into_an_mmdet_environment_and_explains(tmp_path):
    # built from a copy of what the package is made of (setuptools writes build/ and
    # *.egg-info next to the sources)
    source = tmp_path / 'source'
    shutil.copytree(os.path.join(REPO, 'odamtrain'), source / 'odamtrain',
                    ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('setup.cfg', 'pyproject.toml', 'README.md', 'LICENSE'):
        shutil.copy(os.path.join(REPO, name), source / name)
    dist = tmp_path / 'dist'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--no-index', '--quiet', '-w', str(dist), str(source)], check=True)
    wheel, = dist.glob('odamtrain-*.whl')
    # the user's environment: a new one that sees this one's packages (torch, mmcv, mmdet),
    # not this repository (the path is not a site directory: its .pth files, among them an
    # editable odamtrain, are not read)
    env = tmp_path / 'user env'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(env)], check=True)
    python = str(env / 'bin' / 'python')
    site = Path(subprocess.run([python, '-c', 'import sysconfig; '
                                'print(sysconfig.get_paths()["purelib"])'],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / 'mmdet_environment.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    absent = subprocess.run([python, '-c', 'import odamtrain'], cwd=outside,
                            capture_output=True, text=True)
    assert absent.returncode != 0 and 'odamtrain' in absent.stderr
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index',
                    '--quiet', '--target', str(site), str(wheel)], check=True)
    run = subprocess.run([python, '-c', USER_SCRIPT], cwd=outside, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith(str(site))
