"""Write a synthetic CrowdHuman (Images/*.jpg, annotation_{train,val}.odgt) and print its
crowd statistics. Deterministic by --seed; a folder already holding the same data is kept.

    python tools/make_synthetic_crowdhuman.py --out data/synthetic_crowdhuman \
        --num-train 600 --num-val 100 --seed 0
    # a val set of another crowd density (DENSITIES in odamtrain/datasets/synthetic.py)
    python tools/make_synthetic_crowdhuman.py --out data/synthetic_dense --num-train 0 \
        --num-val 60 --density dense
"""
import argparse
import json
import os.path as osp

from odamtrain.datasets.synthetic import DENSITIES, GENERATOR_VERSION, make_synthetic_crowdhuman
from odamtrain.utils import atomic_write_text


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='output folder (CrowdHuman layout)')
    p.add_argument('--num-train', type=int, default=600)
    p.add_argument('--num-val', type=int, default=100)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--density', choices=list(DENSITIES), default='default',
                   help='crowd density of the scenes')
    p.add_argument('--force', action='store_true', help='regenerate even if present')
    args = p.parse_args()
    if args.num_train < 0 or args.num_val < 1:
        p.error('--num-train must be >= 0 (0: a val set only) and --num-val >= 1')
    params = dict(num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                  version=GENERATOR_VERSION)
    if args.density != 'default':  # the default's parameters stay those of earlier data
        params['density'] = args.density
    meta_path = osp.join(args.out, 'synthetic_meta.json')
    if not args.force and osp.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get('params') == params:
            print(f'{args.out}: synthetic CrowdHuman with {params} already present')
            print_stats(meta['stats'])
            return
    stats = make_synthetic_crowdhuman(args.out, args.num_train, args.num_val, args.seed,
                                      DENSITIES[args.density])
    atomic_write_text(json.dumps(dict(params=params, stats=stats), indent=1), meta_path)
    print(f'{args.out}: wrote synthetic CrowdHuman ({params})')
    print_stats(stats)


def print_stats(stats: dict) -> None:
    rows = [('images', 'd'), ('persons', 'd'), ('persons_per_image', '.2f'),
            ('crowd_fraction', '.3f'), ('pairs_iou_gt_0_3', 'd'), ('pairs_iou_gt_0_5', 'd'),
            ('pairs_iou_gt_0_7', 'd'), ('mean_vbox_fbox_area_ratio', '.3f'),
            ('ignore_regions', 'd'), ('nms_oracle_recall', '.3f')]
    print(f'{"statistic":28s}' + ''.join(f'{s:>10s}' for s in stats))
    for key, fmt in rows:
        print(f'{key:28s}' + ''.join(f'{format(stats[s][key], fmt):>10s}' for s in stats))
    print('crowd_fraction: persons with IoU > 0.5 to another person; nms_oracle_recall: '
          'recall of NMS@0.5 on the GT boxes themselves')


if __name__ == '__main__':
    main()
