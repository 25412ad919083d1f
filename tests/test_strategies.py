"""
Tests for L{balancebeam.strategies}.

Every strategy is driven with a seeded C{random.Random} and real
L{UpstreamRegistry} records, so distributions are reproducible; tolerances
are several standard deviations wide, yet far tighter than any bug that
skips, doubles or ignores a candidate would produce.
"""

from __future__ import annotations

import random
from collections import Counter, deque

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from balancebeam.config import UpstreamSpec
from balancebeam.interfaces import IBalancingStrategy
from balancebeam.registry import UpstreamRegistry, UpstreamState
from balancebeam.strategies import (
    STRATEGY_NAMES,
    LeastConnectionsStrategy,
    PowerOfTwoChoicesStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    build_strategy,
)

A = "10.0.0.1:8080"
B = "10.0.0.2:8080"
C = "10.0.0.3:8080"
D = "10.0.0.4:8080"


def fleet(*weights: int) -> UpstreamRegistry:
    """
    A registry of upstreams named L{A}, L{B}, L{C}, ... with the given weights.
    """
    specs = [UpstreamSpec(f"10.0.0.{i + 1}", 8080, weight) for i, weight in enumerate(weights)]
    return UpstreamRegistry(specs, Clock())


def count(strategy: IBalancingStrategy, registry: UpstreamRegistry, picks: int) -> Counter[str]:
    """
    Choose C{picks} times from the registry's live upstreams and count the names.
    """
    return Counter(strategy.choose(registry.live()).name for _ in range(picks))


def sequence(strategy: IBalancingStrategy, registry: UpstreamRegistry, picks: int) -> list[str]:
    """
    Choose C{picks} times from the registry's live upstreams and list the names.
    """
    return [strategy.choose(registry.live()).name for _ in range(picks)]


def share_under_load(
    strategy: IBalancingStrategy, registry: UpstreamRegistry, picks: int, concurrency: int
) -> Counter[str]:
    """
    Simulate C{concurrency} requests always in flight, each finishing in the
    order it started, and count where C{picks} requests went.

    Every chosen upstream's C{in_flight} goes up on the pick and down when
    its request finishes, as the relay does.
    """
    outstanding: deque[UpstreamState] = deque()
    counts: Counter[str] = Counter()
    for _ in range(picks):
        if len(outstanding) == concurrency:
            outstanding.popleft().in_flight -= 1
        chosen = strategy.choose(registry.live())
        chosen.in_flight += 1
        outstanding.append(chosen)
        counts[chosen.name] += 1
    return counts


def set_in_flight(registry: UpstreamRegistry, *loads: int) -> None:
    """
    Set each upstream's C{in_flight}, in configuration order.
    """
    for upstream, load in zip(registry.upstreams, loads, strict=True):
        upstream.in_flight = load


class RandomStrategyTests(SynchronousTestCase):
    """
    Tests for L{RandomStrategy}.
    """

    def test_provides_interface(self) -> None:
        """
        L{RandomStrategy} provides L{IBalancingStrategy}.
        """
        self.assertTrue(verifyObject(IBalancingStrategy, RandomStrategy(random.Random(0))))

    def test_equal_weights_uniform(self) -> None:
        """
        With equal weights, 3000 picks split about evenly over 3 upstreams.
        """
        counts = count(RandomStrategy(random.Random(1)), fleet(1, 1, 1), 3000)
        self.assertEqual(sorted(counts), [A, B, C])
        for name in (A, B, C):
            self.assertTrue(900 <= counts[name] <= 1100, counts)

    def test_weights_honoured(self) -> None:
        """
        An upstream of weight 3 gets about three times the picks of one of weight 1.
        """
        counts = count(RandomStrategy(random.Random(2)), fleet(3, 1), 4000)
        self.assertTrue(2880 <= counts[A] <= 3120, counts)
        self.assertEqual(counts[A] + counts[B], 4000)

    def test_weights_honoured_three_ways(self) -> None:
        """
        Weights 5, 1, 1 give shares of about 5/7, 1/7 and 1/7.
        """
        counts = count(RandomStrategy(random.Random(3)), fleet(5, 1, 1), 7000)
        self.assertTrue(4880 <= counts[A] <= 5120, counts)
        self.assertTrue(900 <= counts[B] <= 1100, counts)
        self.assertTrue(900 <= counts[C] <= 1100, counts)

    def test_seeded_is_reproducible(self) -> None:
        """
        Two strategies with equally seeded sources make the same choices.
        """
        registry = fleet(1, 2, 3)
        first = sequence(RandomStrategy(random.Random(7)), registry, 50)
        second = sequence(RandomStrategy(random.Random(7)), registry, 50)
        self.assertEqual(first, second)
        self.assertEqual(set(first), {A, B, C})

    def test_dead_upstream_not_chosen(self) -> None:
        """
        Once an upstream is marked down it is never chosen, and once it is up again it is.
        """
        registry = fleet(1, 1, 1)
        strategy = RandomStrategy(random.Random(4))
        count(strategy, registry, 10)
        registry.mark_down(registry.upstreams[1], "test")
        down = count(strategy, registry, 1000)
        self.assertEqual(down[B], 0)
        self.assertTrue(400 <= down[A] <= 600, down)
        registry.mark_up(registry.upstreams[1], "test")
        up = count(strategy, registry, 3000)
        self.assertTrue(900 <= up[B] <= 1100, up)

    def test_new_list_of_same_length(self) -> None:
        """
        A different list of the same length is not mistaken for the cached one.
        """
        registry = fleet(1, 1, 3, 3)
        a, b, c, d = registry.upstreams
        strategy = RandomStrategy(random.Random(5))
        first = Counter(strategy.choose([a, b]).name for _ in range(100))
        second = Counter(strategy.choose([c, d]).name for _ in range(1000))
        self.assertEqual(sorted(first), [A, B])
        self.assertEqual(sorted(second), [C, D])
        self.assertTrue(400 <= second[C] <= 600, second)

    def test_weights_of_a_new_list(self) -> None:
        """
        Switching from an equal-weight list to a weighted one applies the new weights.
        """
        registry = fleet(1, 1, 3)
        a, b, c = registry.upstreams
        strategy = RandomStrategy(random.Random(6))
        count_equal = Counter(strategy.choose([a, b]).name for _ in range(100))
        weighted = Counter(strategy.choose((a, c)).name for _ in range(4000))
        self.assertEqual(sorted(count_equal), [A, B])
        self.assertTrue(2880 <= weighted[C] <= 3120, weighted)

    def test_single_candidate(self) -> None:
        """
        A single candidate is always the one chosen.
        """
        registry = fleet(1, 1)
        registry.mark_down(registry.upstreams[0], "test")
        self.assertEqual(count(RandomStrategy(random.Random(0)), registry, 20), {B: 20})


class RoundRobinStrategyTests(SynchronousTestCase):
    """
    Tests for L{RoundRobinStrategy}.
    """

    def test_provides_interface(self) -> None:
        """
        L{RoundRobinStrategy} provides L{IBalancingStrategy}.
        """
        self.assertTrue(verifyObject(IBalancingStrategy, RoundRobinStrategy()))

    def test_equal_weights_rotate(self) -> None:
        """
        With equal weights the upstreams are chosen in turn, in configuration order.
        """
        self.assertEqual(
            sequence(RoundRobinStrategy(), fleet(2, 2, 2), 7), [A, B, C, A, B, C, A]
        )

    def test_smooth_weighted_sequence(self) -> None:
        """
        Weights 5, 1, 1 give nginx's smooth sequence a a b a c a a, over and over.
        """
        cycle = [A, A, B, A, C, A, A]
        self.assertEqual(sequence(RoundRobinStrategy(), fleet(5, 1, 1), 21), cycle * 3)

    def test_weights_three_to_one(self) -> None:
        """
        Weights 3 and 1 give a a b a, so exactly 3 picks in 4 go to the heavier.
        """
        strategy = RoundRobinStrategy()
        registry = fleet(3, 1)
        self.assertEqual(sequence(strategy, registry, 4), [A, A, B, A])
        self.assertEqual(count(strategy, registry, 400), {A: 300, B: 100})

    def test_continues_after_last_chosen_dies(self) -> None:
        """
        When the upstream chosen last goes down, the rotation continues with the
        one that followed it, rather than restarting at the first.
        """
        registry = fleet(1, 1, 1, 1)
        strategy = RoundRobinStrategy()
        self.assertEqual(sequence(strategy, registry, 2), [A, B])
        registry.mark_down(registry.upstreams[1], "test")
        self.assertEqual(sequence(strategy, registry, 4), [C, D, A, C])

    def test_continues_after_next_dies(self) -> None:
        """
        When the upstream due next goes down, it is skipped and the rest keep their turn.
        """
        registry = fleet(1, 1, 1)
        strategy = RoundRobinStrategy()
        self.assertEqual(sequence(strategy, registry, 1), [A])
        registry.mark_down(registry.upstreams[1], "test")
        self.assertEqual(sequence(strategy, registry, 3), [C, A, C])

    def test_revived_upstream_takes_its_turn(self) -> None:
        """
        An upstream that comes back is chosen in its place in the order.
        """
        registry = fleet(1, 1, 1)
        strategy = RoundRobinStrategy()
        registry.mark_down(registry.upstreams[1], "test")
        self.assertEqual(sequence(strategy, registry, 3), [A, C, A])
        registry.mark_up(registry.upstreams[1], "test")
        self.assertEqual(sequence(strategy, registry, 4), [B, C, A, B])

    def test_new_list_same_members_keeps_position(self) -> None:
        """
        A new list with the same members (down then up between picks) does not
        restart the rotation.
        """
        registry = fleet(1, 1, 1)
        strategy = RoundRobinStrategy()
        self.assertEqual(sequence(strategy, registry, 2), [A, B])
        before = registry.live()
        registry.mark_down(registry.upstreams[0], "test")
        registry.mark_up(registry.upstreams[0], "test")
        self.assertIsNot(registry.live(), before)
        self.assertEqual(sequence(strategy, registry, 3), [C, A, B])

    def test_weighted_after_upstream_dies(self) -> None:
        """
        Mid-cycle, when weights 5, 1, 1 lose the middle upstream, the other two
        keep their scores and then share 5 to 1 exactly.
        """
        registry = fleet(5, 1, 1)
        strategy = RoundRobinStrategy()
        self.assertEqual(sequence(strategy, registry, 10), [A, A, B, A, C, A, A, A, A, B])
        registry.mark_down(registry.upstreams[1], "test")
        self.assertEqual(
            sequence(strategy, registry, 12), [A, A, C, A, A, A, A, A, C, A, A, A]
        )
        self.assertEqual(count(strategy, registry, 600), {A: 500, C: 100})

    def test_weighted_revived_upstream_neither_flooded_nor_starved(self) -> None:
        """
        An upstream that comes back to a weighted rotation starts at the others'
        mean score (here 2, between -1 and 5): one pick in its first cycle, then
        its exact share.
        """
        registry = fleet(5, 1, 1)
        strategy = RoundRobinStrategy()
        sequence(strategy, registry, 10)
        registry.mark_down(registry.upstreams[1], "test")
        self.assertEqual(sequence(strategy, registry, 2), [A, A])
        registry.mark_up(registry.upstreams[1], "test")
        self.assertEqual(sequence(strategy, registry, 7), [C, A, A, B, A, A, A])
        self.assertEqual(count(strategy, registry, 700), {A: 500, B: 100, C: 100})

    def test_weighted_down_and_up_between_picks(self) -> None:
        """
        An upstream that goes down and comes back between two picks keeps its score.
        """
        registry = fleet(5, 1, 1)
        strategy = RoundRobinStrategy()
        self.assertEqual(sequence(strategy, registry, 3), [A, A, B])
        registry.mark_down(registry.upstreams[1], "test")
        registry.mark_up(registry.upstreams[1], "test")
        self.assertEqual(sequence(strategy, registry, 4), [A, C, A, A])

    def test_weights_change_mode(self) -> None:
        """
        Going from unequal weights to equal ones (the odd one dies) and back
        keeps choosing only live upstreams in the right proportions.
        """
        registry = fleet(2, 2, 1)
        strategy = RoundRobinStrategy()
        self.assertEqual(count(strategy, registry, 50), {A: 20, B: 20, C: 10})
        registry.mark_down(registry.upstreams[2], "test")
        self.assertEqual(sequence(strategy, registry, 4), [A, B, A, B])
        registry.mark_up(registry.upstreams[2], "test")
        self.assertEqual(count(strategy, registry, 50), {A: 20, B: 20, C: 10})

    def test_single_candidate(self) -> None:
        """
        A single candidate is chosen every time.
        """
        self.assertEqual(count(RoundRobinStrategy(), fleet(4), 5), {A: 5})


class LeastConnectionsStrategyTests(SynchronousTestCase):
    """
    Tests for L{LeastConnectionsStrategy}.
    """

    def test_provides_interface(self) -> None:
        """
        L{LeastConnectionsStrategy} provides L{IBalancingStrategy}.
        """
        strategy = LeastConnectionsStrategy(random.Random(0))
        self.assertTrue(verifyObject(IBalancingStrategy, strategy))

    def test_prefers_fewest_in_flight(self) -> None:
        """
        The upstream with the fewest in-flight requests is always chosen.
        """
        registry = fleet(1, 1, 1)
        set_in_flight(registry, 2, 0, 1)
        strategy = LeastConnectionsStrategy(random.Random(0))
        self.assertEqual(count(strategy, registry, 100), {B: 100})

    def test_follows_changing_loads(self) -> None:
        """
        Loads are read on every pick, even when the candidate list is the same object.
        """
        registry = fleet(1, 1, 1)
        strategy = LeastConnectionsStrategy(random.Random(0))
        set_in_flight(registry, 0, 1, 1)
        self.assertEqual(strategy.choose(registry.live()).name, A)
        set_in_flight(registry, 1, 1, 0)
        self.assertEqual(strategy.choose(registry.live()).name, C)

    def test_load_relative_to_weight(self) -> None:
        """
        Load is in-flight requests divided by weight.
        """
        registry = fleet(3, 1)
        strategy = LeastConnectionsStrategy(random.Random(0))
        set_in_flight(registry, 2, 1)
        self.assertEqual(count(strategy, registry, 20), {A: 20})
        set_in_flight(registry, 4, 1)
        self.assertEqual(count(strategy, registry, 20), {B: 20})

    def test_idle_uniform(self) -> None:
        """
        Idle upstreams of equal weight are all tied and share 3000 picks evenly.
        """
        counts = count(LeastConnectionsStrategy(random.Random(1)), fleet(1, 1, 1), 3000)
        for name in (A, B, C):
            self.assertTrue(900 <= counts[name] <= 1100, counts)

    def test_ties_broken_among_tied_only(self) -> None:
        """
        A tie is broken at random between the tied upstreams, never the busier one.
        """
        registry = fleet(1, 1, 1)
        set_in_flight(registry, 2, 5, 2)
        counts = count(LeastConnectionsStrategy(random.Random(2)), registry, 3000)
        self.assertEqual(counts[B], 0)
        self.assertTrue(1400 <= counts[A] <= 1600, counts)
        self.assertEqual(counts[A] + counts[C], 3000)

    def test_ties_after_a_new_best(self) -> None:
        """
        Upstreams tied with an earlier, worse load are dropped when a better one appears.
        """
        registry = fleet(1, 1, 1, 1)
        set_in_flight(registry, 3, 3, 1, 1)
        counts = count(LeastConnectionsStrategy(random.Random(3)), registry, 2000)
        self.assertEqual(counts[A] + counts[B], 0)
        self.assertTrue(900 <= counts[C] <= 1100, counts)

    def test_weights_honoured_when_idle(self) -> None:
        """
        Idle upstreams of weights 3 and 1 are tied and share picks about 3 to 1.
        """
        counts = count(LeastConnectionsStrategy(random.Random(4)), fleet(3, 1), 4000)
        self.assertTrue(2880 <= counts[A] <= 3120, counts)

    def test_weights_honoured_under_load(self) -> None:
        """
        With 8 requests always in flight, weights 3 and 1 share the traffic 3 to 1.
        """
        strategy = LeastConnectionsStrategy(random.Random(5))
        counts = share_under_load(strategy, fleet(3, 1), 4000, 8)
        self.assertTrue(2960 <= counts[A] <= 3040, counts)

    def test_dead_upstream_not_chosen(self) -> None:
        """
        An idle upstream that is down is never chosen, even though it is the least loaded.
        """
        registry = fleet(1, 1)
        set_in_flight(registry, 0, 9)
        registry.mark_down(registry.upstreams[0], "test")
        self.assertEqual(count(LeastConnectionsStrategy(random.Random(0)), registry, 10), {B: 10})


class PowerOfTwoChoicesStrategyTests(SynchronousTestCase):
    """
    Tests for L{PowerOfTwoChoicesStrategy}.
    """

    def test_provides_interface(self) -> None:
        """
        L{PowerOfTwoChoicesStrategy} provides L{IBalancingStrategy}.
        """
        strategy = PowerOfTwoChoicesStrategy(random.Random(0))
        self.assertTrue(verifyObject(IBalancingStrategy, strategy))

    def test_single_candidate_without_randomness(self) -> None:
        """
        A single candidate is returned without drawing a random number.
        """
        rng = random.Random(0)
        state = rng.getstate()
        self.assertEqual(count(PowerOfTwoChoicesStrategy(rng), fleet(2), 5), {A: 5})
        self.assertEqual(rng.getstate(), state)

    def test_two_distinct_candidates(self) -> None:
        """
        With two candidates both are always compared, so the busier is never chosen.
        """
        registry = fleet(1, 1)
        set_in_flight(registry, 1, 0)
        strategy = PowerOfTwoChoicesStrategy(random.Random(1))
        self.assertEqual(count(strategy, registry, 500), {B: 500})

    def test_two_distinct_weighted_candidates(self) -> None:
        """
        Weighted sampling never draws the same candidate twice either.
        """
        registry = fleet(3, 1)
        set_in_flight(registry, 4, 1)
        strategy = PowerOfTwoChoicesStrategy(random.Random(2))
        self.assertEqual(count(strategy, registry, 500), {B: 500})

    def test_idle_uniform(self) -> None:
        """
        Idle upstreams of equal weight share 3000 picks evenly.
        """
        counts = count(PowerOfTwoChoicesStrategy(random.Random(3)), fleet(1, 1, 1), 3000)
        for name in (A, B, C):
            self.assertTrue(900 <= counts[name] <= 1100, counts)

    def test_never_picks_the_busiest(self) -> None:
        """
        The busiest upstream loses every pair; the others win in proportion to
        how often they are the less loaded of the pair (2/3 and 1/3).
        """
        registry = fleet(1, 1, 1)
        set_in_flight(registry, 0, 1, 2)
        counts = count(PowerOfTwoChoicesStrategy(random.Random(4)), registry, 3000)
        self.assertEqual(counts[C], 0)
        self.assertTrue(1900 <= counts[A] <= 2100, counts)

    def test_prefers_idle(self) -> None:
        """
        The one idle upstream wins every pair it is in (2/3 of picks); the tied
        busy ones share the rest evenly.
        """
        registry = fleet(1, 1, 1)
        set_in_flight(registry, 5, 0, 5)
        counts = count(PowerOfTwoChoicesStrategy(random.Random(5)), registry, 3000)
        self.assertTrue(1900 <= counts[B] <= 2100, counts)
        self.assertTrue(420 <= counts[A] <= 580, counts)
        self.assertTrue(420 <= counts[C] <= 580, counts)

    def test_ties_broken_among_tied_only(self) -> None:
        """
        Two tied idle upstreams share the picks evenly; the busy third never wins.
        """
        registry = fleet(1, 1, 1)
        set_in_flight(registry, 0, 0, 9)
        counts = count(PowerOfTwoChoicesStrategy(random.Random(6)), registry, 3000)
        self.assertEqual(counts[C], 0)
        self.assertTrue(1400 <= counts[A] <= 1600, counts)

    def test_weighted_samples(self) -> None:
        """
        Samples are weighted: with weights 5, 1, 1 and the heavy one idle, the
        pair leaves it out only 1 time in 21 (2/7 times 1/6), not 1 in 3.
        """
        registry = fleet(5, 1, 1)
        set_in_flight(registry, 0, 1, 1)
        counts = count(PowerOfTwoChoicesStrategy(random.Random(7)), registry, 7000)
        self.assertTrue(6570 <= counts[A] <= 6760, counts)
        self.assertTrue(110 <= counts[B] <= 225, counts)
        self.assertEqual(sum(counts.values()), 7000)

    def test_weights_honoured_when_idle(self) -> None:
        """
        Idle upstreams of weights 3 and 1 share picks about 3 to 1.
        """
        counts = count(PowerOfTwoChoicesStrategy(random.Random(8)), fleet(3, 1), 4000)
        self.assertTrue(2880 <= counts[A] <= 3120, counts)

    def test_weights_honoured_idle_three_ways(self) -> None:
        """
        Idle upstreams of weights 3, 1, 1 get shares of about 3/5, 1/5 and 1/5.
        """
        counts = count(PowerOfTwoChoicesStrategy(random.Random(9)), fleet(3, 1, 1), 5000)
        self.assertTrue(2880 <= counts[A] <= 3120, counts)
        self.assertTrue(900 <= counts[B] <= 1100, counts)

    def test_weights_honoured_under_load(self) -> None:
        """
        With 8 requests always in flight, weights 3 and 1 share the traffic 3 to 1.
        """
        strategy = PowerOfTwoChoicesStrategy(random.Random(10))
        counts = share_under_load(strategy, fleet(3, 1), 4000, 8)
        self.assertTrue(2960 <= counts[A] <= 3040, counts)

    def test_dead_upstream_not_chosen(self) -> None:
        """
        Upstreams marked down are never sampled.
        """
        registry = fleet(1, 1, 1)
        set_in_flight(registry, 0, 5, 5)
        registry.mark_down(registry.upstreams[0], "test")
        counts = count(PowerOfTwoChoicesStrategy(random.Random(11)), registry, 1000)
        self.assertEqual(counts[A], 0)
        self.assertEqual(counts[B] + counts[C], 1000)


class BuildStrategyTests(SynchronousTestCase):
    """
    Tests for L{build_strategy} and L{STRATEGY_NAMES}.
    """

    def test_names(self) -> None:
        """
        The documented names are offered, with the default first.
        """
        self.assertEqual(STRATEGY_NAMES, ("random", "round-robin", "least-connections", "p2c"))

    def test_builds_each(self) -> None:
        """
        Each name builds the matching strategy class.
        """
        expected = {
            "random": RandomStrategy,
            "round-robin": RoundRobinStrategy,
            "least-connections": LeastConnectionsStrategy,
            "p2c": PowerOfTwoChoicesStrategy,
        }
        for name in STRATEGY_NAMES:
            strategy = build_strategy(name, random.Random(0))
            self.assertIsInstance(strategy, expected[name])
            self.assertTrue(verifyObject(IBalancingStrategy, strategy))

    def test_uses_given_random(self) -> None:
        """
        The built strategy draws from the given source, so equal seeds give equal choices.
        """
        registry = fleet(1, 1, 1, 1)
        first = sequence(build_strategy("random", random.Random(3)), registry, 40)
        second = sequence(RandomStrategy(random.Random(3)), registry, 40)
        self.assertEqual(first, second)

    def test_unknown_name(self) -> None:
        """
        An unknown name raises L{ValueError} naming the choices.
        """
        with self.assertRaises(ValueError) as caught:
            build_strategy("fastest", random.Random(0))
        self.assertEqual(
            str(caught.exception),
            "unknown strategy 'fastest'; "
            "choose one of random, round-robin, least-connections, p2c",
        )
