"""How many critic steps precede each generator step.

`constant`: the preset's n_critic every time. `wgan-reference`: the schedule of the WGAN authors' released
code (github.com/martinarjovsky/WassersteinGAN, main.py: `if gen_iterations < 25 or gen_iterations % 500 == 0:
Diters = 100 else Diters = opt.Diters`, default 5), which Arjovsky et al. 2017 (arXiv 1701.07875) do not
state in the paper: the critic is trained close to optimality at the start and every 500th generator step.
The reference also cuts a critic loop short at the end of a data epoch; here batches are drawn with
replacement, so there are no epochs and no short loops.
"""

from __future__ import annotations

REFERENCE_WARMUP = 25  # the first generator steps with the long critic loop
REFERENCE_EVERY = 500  # and every this many generator steps thereafter
REFERENCE_LONG = 100  # critic steps on those generator steps


def critic_steps(schedule: str, n_critic: int, generator_step: int) -> int:
    """Critic steps before generator step `generator_step` (0 = the first; steps already taken, as the
    reference's gen_iterations)."""
    if schedule == "constant":
        return n_critic
    if schedule == "wgan-reference":
        long = generator_step < REFERENCE_WARMUP or generator_step % REFERENCE_EVERY == 0
        return REFERENCE_LONG if long else n_critic
    raise ValueError(f"unknown critic schedule {schedule!r}")
