"""
Balancing strategies: small objects that choose the upstream for one request.

Every strategy implements L{IBalancingStrategy} and is called once per
request with the live upstreams (L{UpstreamRegistry.live
<balancebeam.registry.UpstreamRegistry.live>}), so each C{choose} is kept
cheap: no per-call allocation proportional to the fleet, and a fast path
when all weights are equal.

The registry hands out the same list object until an upstream changes
state, then a new one; it never changes a list in place. Strategies rely
on that to compute per-list figures (weights, their sums) once: a cache is
keyed on the identity of the list, holds a reference to it so that its id
cannot be reused, and is also dropped when the length differs. Weights are
read from L{UpstreamState.weight <balancebeam.registry.UpstreamState>} when
a list is first seen, so changing a weight in place takes effect with the
next list.

Randomness comes in as a C{random.Random}, so tests seed it.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate

from zope.interface import classImplements

from balancebeam.interfaces import IBalancingStrategy
from balancebeam.registry import UpstreamState

STRATEGY_NAMES: tuple[str, ...] = ("random", "round-robin", "least-connections", "p2c")
"""
The names L{build_strategy} accepts, in the order C{--help} lists them.
"""


class _WeightProfile:
    """
    The weights of one candidate list, computed once per list object.

    @ivar candidates: the list described; kept so that its id cannot be
        reused by another list while this profile is cached.
    @ivar size: the list's length when the profile was built.
    @ivar equal: whether every candidate has the same weight.
    @ivar weights: each candidate's weight, in list order.
    @ivar cumulative: running sums of C{weights}.
    @ivar total: the sum of all weights.
    """

    __slots__ = ("candidates", "size", "equal", "weights", "cumulative", "total")

    def __init__(self, candidates: Sequence[UpstreamState]) -> None:
        self.candidates = candidates
        self.size = len(candidates)
        self.weights = [u.weight for u in candidates]
        self.equal = len(set(self.weights)) <= 1
        self.cumulative = list(accumulate(self.weights))
        self.total = self.cumulative[-1] if self.cumulative else 0

    def describes(self, candidates: Sequence[UpstreamState]) -> bool:
        """
        Whether this profile was built for C{candidates}.
        """
        return candidates is self.candidates and len(candidates) == self.size


_NO_PROFILE = _WeightProfile(())


class RandomStrategy:
    """
    Picks a candidate at random, in proportion to its weight.

    With equal weights every candidate is equally likely; this is the
    historical behaviour and the default.
    """

    def __init__(self, rng: random.Random) -> None:
        """
        @param rng: the source of randomness.
        """
        self._random: Callable[[], float] = rng.random
        self._profile = _NO_PROFILE

    def choose(self, candidates: Sequence[UpstreamState]) -> UpstreamState:
        """
        Pick one of C{candidates} at random, weighted by C{weight}.
        """
        profile = self._profile
        if not profile.describes(candidates):
            profile = self._profile = _WeightProfile(candidates)
        if profile.equal:
            # random() < 1, so the index is below size for any realistic size.
            return candidates[int(self._random() * profile.size)]
        index = bisect_right(
            profile.cumulative, self._random() * profile.total, 0, profile.size - 1
        )
        return candidates[index]


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(RandomStrategy, IBalancingStrategy)


class RoundRobinStrategy:
    """
    Smooth weighted round robin, as in nginx's C{upstream} module.

    Each pick adds every candidate's weight to its running score, chooses
    the highest score (the earliest in the list on a tie) and takes the sum
    of all weights off the winner. Weights 5, 1, 1 give C{a a b a c a a};
    equal weights give plain rotation, which runs on a cursor instead.

    When the candidate list changes, the rotation continues rather than
    restarting: with equal weights the cursor moves to the candidate after
    the last one chosen (skipping any that left); with weights, remaining
    candidates keep their scores and newcomers start at the remaining
    candidates' mean, so a revived upstream is neither flooded nor starved.

    @ivar _candidates: the list the state below describes.
    @ivar _members: a snapshot of C{_candidates}, to carry scores across a change.
    @ivar _equal: whether all weights are equal (cursor mode).
    @ivar _next: in cursor mode, the index of the next pick.
    @ivar _last: the upstream chosen last, or C{None} before the first pick.
    @ivar _weights: in weighted mode, each candidate's weight.
    @ivar _scores: in weighted mode, each candidate's running score.
    @ivar _total: in weighted mode, the sum of C{_weights}.
    """

    def __init__(self) -> None:
        self._candidates: Sequence[UpstreamState] = ()
        self._members: tuple[UpstreamState, ...] = ()
        self._equal = True
        self._next = 0
        self._last: UpstreamState | None = None
        self._weights: list[int] = []
        self._scores: list[int] = []
        self._total = 0

    def choose(self, candidates: Sequence[UpstreamState]) -> UpstreamState:
        """
        Pick the next candidate in the (weighted) rotation.
        """
        if candidates is not self._candidates or len(candidates) != len(self._members):
            self._adopt(candidates)
        if self._equal:
            index = self._next
            self._next = index + 1 if index + 1 < len(self._members) else 0
        else:
            scores = self._scores
            weights = self._weights
            index = 0
            best = scores[0] = scores[0] + weights[0]
            for i in range(1, len(scores)):
                score = scores[i] = scores[i] + weights[i]
                if score > best:
                    best = score
                    index = i
            scores[index] -= self._total
        chosen = self._last = candidates[index]
        return chosen

    def _adopt(self, candidates: Sequence[UpstreamState]) -> None:
        """
        Carry the rotation over to a new candidate list.
        """
        members = tuple(candidates)
        weights = [u.weight for u in members]
        equal = len(set(weights)) <= 1
        if equal:
            self._next = self._resume_index(members)
        else:
            old_scores: dict[UpstreamState, int] = {}
            if not self._equal:
                old_scores = dict(zip(self._members, self._scores))
            kept = [old_scores[u] for u in members if u in old_scores]
            start = sum(kept) // len(kept) if kept else 0
            self._scores = [old_scores.get(u, start) for u in members]
            self._weights = weights
            self._total = sum(weights)
        self._candidates = candidates
        self._members = members
        self._equal = equal

    def _resume_index(self, members: tuple[UpstreamState, ...]) -> int:
        """
        The index in C{members} of the candidate that follows the last pick.
        """
        last = self._last
        if last is None:
            return 0
        position = {u: i for i, u in enumerate(members)}
        if last in position:
            return (position[last] + 1) % len(members)
        old = self._members
        if last in old:
            start = old.index(last)
            for step in range(1, len(old)):
                follower = old[(start + step) % len(old)]
                if follower in position:
                    return position[follower]
        return 0


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(RoundRobinStrategy, IBalancingStrategy)


class LeastConnectionsStrategy:
    """
    Picks the candidate with the fewest in-flight requests per unit of weight.

    Load is C{in_flight / weight} (compared by cross-multiplying, so exact).
    Ties are broken at random among the tied candidates only, in proportion
    to their weights (uniformly when weights are equal), so an idle fleet
    still receives traffic in the configured ratio.
    """

    def __init__(self, rng: random.Random) -> None:
        """
        @param rng: the source of randomness for breaking ties.
        """
        self._random: Callable[[], float] = rng.random
        self._profile = _NO_PROFILE
        self._tied: list[UpstreamState] = []

    def choose(self, candidates: Sequence[UpstreamState]) -> UpstreamState:
        """
        Pick the least loaded of C{candidates}, relative to weight.
        """
        first = candidates[0]
        count = len(candidates)
        if count == 1:
            return first
        tied = self._tied
        tied.clear()
        tied.append(first)
        best_load = first.in_flight
        best_weight = first.weight
        for i in range(1, count):
            upstream = candidates[i]
            mine = upstream.in_flight * best_weight
            theirs = best_load * upstream.weight
            if mine < theirs:
                tied.clear()
                tied.append(upstream)
                best_load = upstream.in_flight
                best_weight = upstream.weight
            elif mine == theirs:
                tied.append(upstream)
        ties = len(tied)
        if ties == 1:
            return tied[0]
        profile = self._profile
        if not profile.describes(candidates):
            profile = self._profile = _WeightProfile(candidates)
        if profile.equal:
            return tied[int(self._random() * ties)]
        total = 0
        for upstream in tied:
            total += upstream.weight
        remaining = self._random() * total
        for upstream in tied:
            remaining -= upstream.weight
            if remaining < 0:
                return upstream
        return tied[-1]


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(LeastConnectionsStrategy, IBalancingStrategy)


class PowerOfTwoChoicesStrategy:
    """
    Power of two choices: sample two distinct candidates, keep the less loaded.

    Both samples are drawn in proportion to weight; load is
    C{in_flight / weight}. On a tie the first sample wins: the pair's order
    is itself random, so ties are broken uniformly for equal weights, and an
    idle fleet receives traffic exactly in the configured ratio. Each pick
    costs two random numbers and two comparisons whatever the fleet size.
    """

    def __init__(self, rng: random.Random) -> None:
        """
        @param rng: the source of randomness for the samples.
        """
        self._random: Callable[[], float] = rng.random
        self._profile = _NO_PROFILE

    def choose(self, candidates: Sequence[UpstreamState]) -> UpstreamState:
        """
        Pick the less loaded of two random candidates.
        """
        profile = self._profile
        if not profile.describes(candidates):
            profile = self._profile = _WeightProfile(candidates)
        size = profile.size
        if size == 1:
            return candidates[0]
        draw = self._random
        if profile.equal:
            i = int(draw() * size)
            j = int(draw() * (size - 1))
            if j >= i:
                j += 1
        else:
            cumulative = profile.cumulative
            last = size - 1
            i = bisect_right(cumulative, draw() * profile.total, 0, last)
            # Draw the second from the others: map [0, total - w_i) onto
            # [0, total) with the first sample's span cut out.
            weight = profile.weights[i]
            point = draw() * (profile.total - weight)
            if point >= cumulative[i] - weight:
                point += weight
            j = bisect_right(cumulative, point, 0, last)
            if j == i:
                # Only reachable with weights of 0, which configuration rejects.
                j = i - 1 if i else 1
        first = candidates[i]
        second = candidates[j]
        if second.in_flight * first.weight < first.in_flight * second.weight:
            return second
        return first


# After the class, not as a decorator: mypyc compiles a decorated class as a
# Python class (slower attribute access); mypy-zope checks both forms.
classImplements(PowerOfTwoChoicesStrategy, IBalancingStrategy)


_STRATEGIES: dict[str, Callable[[random.Random], IBalancingStrategy]] = {
    "random": RandomStrategy,
    "round-robin": lambda rng: RoundRobinStrategy(),
    "least-connections": LeastConnectionsStrategy,
    "p2c": PowerOfTwoChoicesStrategy,
}


def build_strategy(name: str, rng: random.Random) -> IBalancingStrategy:
    """
    Build the strategy called C{name} (one of L{STRATEGY_NAMES}).

    @param rng: the source of randomness, for the strategies that use one.
    @raise ValueError: when C{name} is not a known strategy.
    """
    factory = _STRATEGIES.get(name)
    if factory is None:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}"
        )
    return factory(rng)
