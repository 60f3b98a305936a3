"""Benchmark: ctlib's DDIM sampling loop against MONAI's ``DiffusionInferer.sample``, side by side in one run.

Both drive the same small 3D ``DiffusionModelUNet`` (channel-concatenated conditioning, MONAI's
``mode="concat"``) from the same starting noise and condition for ``--steps`` DDIM steps (eta = 0,
no clipping: ``DDIMScheduler(clip_sample=False)``, ``set_timesteps(steps)``). After one warm-up each,
they run ``--repeats`` times interleaved, alternating who goes first; the reported number is the ratio of
medians ctlib / MONAI (goal <= 1.05) and the seconds per step; the ratio of minima is kept too, as
it is robust to load spikes from other processes on a shared machine. The network dominates both loops, so the
ratio measures the overhead of each loop around it.

The outputs are not expected to be equal: MONAI 1.6 takes the previous timestep as ``t - T // N`` while
its list comes from linspace (see ``ctlib/diffusion/samplers.py``); ctlib follows the list. The max
difference of the outputs is recorded for information, next to one step of each from the same state
to MONAI's previous timestep, which must agree (same arithmetic, different timestep bookkeeping).

    python bench/sampler_speed.py [--repeats 7] [--steps 20] [--out bench/results/sampler_speed.json]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import torch

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monai.inferers import DiffusionInferer  # noqa: E402
from monai.networks.nets import DiffusionModelUNet  # noqa: E402
from monai.networks.schedulers import DDIMScheduler  # noqa: E402
from timing import interleaved_times  # noqa: E402  (bench/timing.py)

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.diffusion import samplers, schedules  # noqa: E402
from ctlib.diffusion.denoiser import Denoiser  # noqa: E402

GOAL_RATIO = 1.05
PACKAGES = ("torch", "monai", "numpy")
LATENT = (1, 4, 48, 16, 16)  # (B, C, D, h, w): a 48-slice z-window of 128 x 128 slices behind an 8x VAE


def build_unet() -> DiffusionModelUNet:
    """A small 3D latent U-Net (two levels, no attention) that a 2-core CPU runs in tens of ms per step."""
    torch.manual_seed(0)
    unet = DiffusionModelUNet(spatial_dims=3, in_channels=8, out_channels=4, channels=(32, 64),
                              attention_levels=(False, False), num_res_blocks=1, norm_num_groups=16,
                              num_head_channels=32)
    return unet.eval()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=paths.repo_root() / "bench/results/sampler_speed.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    unet = build_unet()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(LATENT, generator=generator)
    cond = torch.randn(LATENT, generator=generator)
    schedule = schedules.make_schedule("linear", num_train_timesteps=1000)
    scheduler = DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", clip_sample=False)
    scheduler.set_timesteps(args.steps)
    inferer = DiffusionInferer(scheduler)
    denoiser = Denoiser(unet, "epsilon", schedule, cond=cond)

    def ours() -> torch.Tensor:
        return samplers.ddim(denoiser, LATENT, num_steps=args.steps, x_T=noise)

    def monai() -> torch.Tensor:
        with torch.no_grad():
            return inferer.sample(
                input_noise=noise,
                diffusion_model=unet,
                scheduler=scheduler,
                conditioning=cond,
                mode="concat",
                verbose=False,
            )

    with torch.no_grad():  # one step, same t and previous t for both
        t = int(scheduler.timesteps[0])
        t_prev = t - 1000 // args.steps
        out = unet(torch.cat([noise, cond], dim=1), torch.full((1,), t, dtype=torch.long))
        ours_step, _ = samplers.ddim_step(out, noise, t, t_prev, schedule, prediction="epsilon")
        monai_step, _ = scheduler.step(out, t, noise)
    one_step_diff = float((ours_step - monai_step).abs().max())

    runners = {"ctlib": ours, "monai": monai}
    warm, times = interleaved_times(runners, args.repeats)
    ours_s, monai_s = statistics.median(times["ctlib"]), statistics.median(times["monai"])
    report = {
        "benchmark": "sampler_speed: ctlib DDIM loop vs MONAI DiffusionInferer.sample + DDIMScheduler, "
                     "same 3D DiffusionModelUNet, medians of interleaved repeats",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info(PACKAGES),
        "torch_threads": torch.get_num_threads(),
        "note": "CPU only: no GPU in this session, so the 512x512x300 GPU target is not measured here",
        "latent_shape_bcdhw": list(LATENT),
        "network": "DiffusionModelUNet(spatial_dims=3, channels=(32, 64), num_res_blocks=1, no attention), "
                   "in 8 = 4 latent + 4 condition (concat), out 4",
        "steps": args.steps,
        "repeats": args.repeats,
        "ctlib_median_s": ours_s,
        "monai_median_s": monai_s,
        "ratio_ctlib_over_monai": ours_s / monai_s,
        "goal_ratio_max": GOAL_RATIO,
        "pass": ours_s / monai_s <= GOAL_RATIO,
        "ratio_of_minima": min(times["ctlib"]) / min(times["monai"]),  # robust to load spikes
        "ctlib_seconds_per_step": ours_s / args.steps,
        "monai_seconds_per_step": monai_s / args.steps,
        "ctlib_times_s": times["ctlib"],
        "monai_times_s": times["monai"],
        "max_abs_diff_outputs": float((warm["ctlib"] - warm["monai"]).abs().max()),
        "output_std": float(warm["monai"].std()),
        "one_step_same_timesteps_max_abs_diff": one_step_diff,
    }
    atomic.write_json(args.out, report)
    verdict = "pass" if report["pass"] else "FAIL"
    print(
        f"ctlib {ours_s:.3f} s ({ours_s / args.steps * 1e3:.1f} ms/step), MONAI {monai_s:.3f} s "
        f"({monai_s / args.steps * 1e3:.1f} ms/step), ratio {ours_s / monai_s:.3f} (goal <= {GOAL_RATIO}): "
        f"{verdict}"
    )
    print(
        f"max |ctlib - MONAI| = {report['max_abs_diff_outputs']:.3g} (output std {report['output_std']:.3g}; "
        "MONAI's t - T//N previous timestep differs from the list); "
        f"one step to the same previous timestep: {one_step_diff:.2g}"
    )
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
