"""Custom tastes for `rlhf simulate --preference` / `rlhf demo --preference`:
traits the demo judge does not encode, to check that the loop learns what users
ask for with their clicks, not only what the judge or the corrections carry.
"""

from __future__ import annotations

from demo.simulation import UserProfile, weighted_axes_utility
from demo.world import Prompt, Verdict

# The world generator's pleasantries (demo.world.tables POLITE_OPENERS / CLOSERS),
# lower-cased. The judge calls them polite; its house style uses them in about
# five answers of six, so corrections written in that style teach them.
SMALL_TALK = ("sure!", "happy to help", "of course", "good question", "hope this helps", "good luck")
SMALL_TALK_PENALTY = 0.5


def has_small_talk(response: str) -> bool:
    text = response.lower()
    return any(phrase in text for phrase in SMALL_TALK)


def no_small_talk_utility(user: UserProfile, prompt: Prompt, response: str, verdict: Verdict) -> float:
    """A user who wants the answer and nothing else: the default taste, halved
    when the response makes small talk ("Sure!", "Hope this helps!", ...)."""
    base = weighted_axes_utility(user, prompt, response, verdict)
    return base * SMALL_TALK_PENALTY if has_small_talk(response) else base
