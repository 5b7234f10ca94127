"""Benchmark Odam-NMS against mmcv's nms on CPU: the operator alone for 100 / 1000 / 5000
candidates (random boxes; heat maps 50 x 67, the size Odam-NMS correlates at), side by side
in one run, median of --repeats.

    python tools/benchmark_nms.py [--counts 100 1000 5000] [--repeats 5] [--threads 2]
"""
import argparse
import statistics
import time

import torch
from mmcv.ops import nms

from odamtrain.ops import odam_nms


def timed(fn, args, repeats):
    """(median seconds of fn(*args) over repeats after a warm-up, its last result)"""
    out = fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--counts', nargs='+', type=int, default=[100, 1000, 5000])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f'{"N":>6s}{"mmcv nms ms":>13s}{"odam_nms ms":>13s}{"ratio":>8s}{"kept nms":>10s}'
          f'{"kept odam":>11s}')
    for n in args.counts:
        g = torch.Generator().manual_seed(n)
        xy = torch.rand(n, 2, generator=g) * 800
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 150 + 10], 1)
        scores = torch.rand(n, generator=g)
        maps = torch.rand(n, 50, 67, generator=g) ** 4
        t_nms, (_, keep_nms) = timed(nms, (boxes, scores, 0.5), args.repeats)
        t_odam, keep_odam = timed(odam_nms, (boxes, scores, maps, 0.5, 0.2, 0.8), args.repeats)
        kept_nms, kept_odam = len(keep_nms), len(keep_odam)
        print(f'{n:>6d}{t_nms * 1e3:>13.2f}{t_odam * 1e3:>13.2f}{t_odam / t_nms:>8.1f}'
              f'{kept_nms:>10d}{kept_odam:>11d}', flush=True)


if __name__ == '__main__':
    main()
