"""A TextWorldExpress game as an environment with immutable states, like search QA.

:meth:`GameEnv.reset` returns a frozen :class:`GameState` and :meth:`GameEnv.step` returns a new
one; any state can be stepped any number of times (turn trees branch from earlier turns). The game
itself lives in a JVM (:mod:`at2po.tasks.games.jvm`), so a state records the commands that led to
it (``history``) and the env keeps a pool of game instances, each standing at some history of some
game. Stepping a state takes an instance standing at its history (or replays the history on a
fresh one: TWX games are deterministic given game, settings, fold and seed) and leaves it at the
new history for the next turn of the same trajectory.

One step reads the agent's turn (:func:`at2po.tasks.games.game_format.parse_turn`) and answers it:

    format problem, or an action not in the valid list   → note + the same view (no game step)
    a valid action                                       → the game steps; its new view
    the game ends (won, lost, or score 1)                → done (finish="answer"), no observation
    this was turn ``max_turns``                          → done (finish="turn_limit")

The view after every turn is ``look`` (where the agent is, what it sees), ``inventory`` and the
valid actions; with ``feedback=True`` the game's own answer to the action comes first. The anchor
state of a turn for GiGPO (:attr:`GameState.anchor`) is ``look + "\\n" + inventory``; without
feedback the observation text is a function of the anchor alone (the valid actions follow from
it), so GiGPO's exact observation match groups turns by anchor state.

Reward (:class:`GameRewardConfig`): 1 for task success, else 0; plus ``progress_weight`` times the
game's final score (its partial credit in [0, 1]); minus ``invalid_penalty`` per invalid turn.

A JVM that dies mid-run is restarted; the games that lived in it end: stepping a state of an older
JVM generation raises :class:`~at2po.tasks.games.jvm.JvmDied` (the rollout ends that trajectory
with finish ``error``), while new episodes run in the new JVM.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from at2po.tasks.games.game_format import (
    PROBLEMS,
    STOP_STRINGS,
    GameAction,
    build_prompt_messages,
    format_actions,
    format_observation,
    normalize_command,
    parse_turn,
)
from at2po.tasks.games.jvm import JvmDied, JvmHost, process_host
from at2po.tasks.rewards import RewardResult

GAMES = ("twc", "cookingworld")
"""Games this env offers: TextWorld-Commonsense (put objects where they belong, ALFWorld-like)
and CookingWorld (find ingredients, prepare a meal; harder)."""

SMALL_SETTINGS: dict[str, str] = {
    "twc": "numLocations=1,numItemsToPutAway=2,includeDoors=0,limitInventorySize=0",
    "cookingworld": "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0",
}
"""Demo-scale settings: one room, two items (twc: 5-7 valid actions, gold path 5 steps)."""

FEEDBACK_BY_GAME: dict[str, bool] = {"twc": False, "cookingworld": True}
"""Whether the view shows the game's answer when ``GameEnvConfig.feedback`` is None: twc's view
(look + inventory) says everything; cookingworld's recipe is only ever an answer (read cookbook)."""

FOLDS = ("train", "dev", "test")


@dataclass(frozen=True)
class GameExample:
    """One game: ``game`` with ``params`` (TWX settings), ``fold`` and ``seed``. ``id``,
    ``data_source``, ``metadata["type"]``, ``question`` and ``golden_answers`` play the roles
    they have for questions (in metrics and tree records)."""

    game: str
    params: str
    fold: str
    seed: int

    def __post_init__(self) -> None:
        if self.game not in GAMES:
            raise ValueError(f"unknown game {self.game!r}; choose from {GAMES}")
        if self.fold not in FOLDS:
            raise ValueError(f"unknown fold {self.fold!r}; choose from {FOLDS}")

    @property
    def id(self) -> str:
        return f"{self.game}/{self.fold}/{self.seed}"

    @property
    def data_source(self) -> str:
        return self.game

    @property
    def metadata(self) -> dict[str, str]:
        return {"type": self.game}

    @property
    def question(self) -> str:
        """A one-line label of the game, where records show a question."""
        return f"{self.game} game, {self.fold} seed {self.seed}"

    @property
    def golden_answers(self) -> tuple[str, ...]:
        """None: a game is won by playing it, not by an answer."""
        return ()


@dataclass(frozen=True)
class GameView:
    """What the game shows at one point: ``look``, ``inventory``, the valid actions, the
    game's answer to the last action (``feedback``), its score and success/failure flags."""

    look: str
    inventory: str
    valid_actions: tuple[str, ...]
    feedback: str
    score: float
    success: bool
    failure: bool

    @classmethod
    def from_json(cls, text: str) -> GameView:
        data = orjson.loads(text)
        return cls(
            look=data["look"].strip(),
            inventory=_inventory(data["inventory"]),
            valid_actions=tuple(sorted(data["validActions"])),
            feedback=data["observation"].strip(),
            score=float(data["score"]),
            success=bool(data["tasksuccess"]),
            failure=bool(data["taskfailure"]),
        )

    @property
    def anchor(self) -> str:
        """The anchor state for GiGPO: ``look + "\\n" + inventory``."""
        return f"{self.look}\n{self.inventory}"

    @property
    def ended(self) -> bool:
        """The game is over: won, lost, or full score (TWX's own done rule, step limit aside)."""
        return self.success or self.failure or self.score >= 1.0

    def render(self, *, feedback: bool) -> str:
        """The text the agent is shown (the module docstring's view)."""
        parts = [self.feedback] if feedback and self.feedback else []
        return "\n".join([*parts, self.anchor, format_actions(self.valid_actions)])


def _inventory(text: str) -> str:
    """The inventory text with its header first and its items one per line, sorted: the order
    in which things were picked up is not part of the state the agent acts on."""
    header, *items = [line.strip() for line in text.strip().splitlines()]
    return "\n".join([header, *sorted(items)])


@dataclass(frozen=True)
class GameTurn:
    """One agent turn: its text, how it was read, the command sent to the game ('' when none)
    and the observation appended after it ('' when none)."""

    text: str
    action: GameAction
    command: str
    observation: str


@dataclass(frozen=True)
class GameState:
    """Where an episode stands. Never mutated: stepping makes a new state.

    ``history``: the commands the game executed. ``view``: what it shows now. ``generation``:
    the JVM generation the game lives in. ``finish``: None while running, else ``answer`` (the
    game ended), ``turn_limit`` or the reason given to :meth:`GameEnv.end_episode`.
    """

    example: GameExample
    prompt: tuple[tuple[str, str], ...]
    view: GameView
    generation: int
    history: tuple[str, ...] = ()
    turns: tuple[GameTurn, ...] = ()
    finish: str | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    @property
    def steps(self) -> int:
        """Agent turns taken, invalid ones included."""
        return len(self.turns)

    @property
    def anchor(self) -> str:
        """The anchor state of the next turn (look + inventory)."""
        return self.view.anchor

    @property
    def won(self) -> bool:
        return self.view.success

    @property
    def invalid_turns(self) -> int:
        return sum(1 for turn in self.turns if not turn.command)

    @property
    def response_text(self) -> str:
        return "".join(turn.text + turn.observation for turn in self.turns)

    def prompt_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.prompt]


@dataclass(frozen=True)
class GameStepOutcome:
    """The new state, the observation to append (None when the episode ended), whether it
    ended, and ``info``: ``action`` (``step`` or ``invalid``), ``problem`` (a key of
    :data:`~at2po.tasks.games.game_format.PROBLEMS` or None), ``finish``, ``anchor`` (the new
    state's look + inventory) and ``reward`` (the game's score change)."""

    state: GameState
    observation: str | None
    done: bool
    info: dict[str, Any]


@dataclass(frozen=True)
class GameRewardConfig:
    """Episode reward: success (1/0) + ``progress_weight`` · final game score − ``invalid_penalty``
    · invalid turns. The defaults give the plain task-success reward."""

    progress_weight: float = 0.0
    invalid_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.progress_weight < 0 or self.invalid_penalty < 0:
            raise ValueError(
                f"progress_weight={self.progress_weight} and invalid_penalty="
                f"{self.invalid_penalty} must be >= 0"
            )


@dataclass(frozen=True)
class GameEnvConfig:
    """Episode limits, view and reward. ``max_turns``: agent turns per episode, invalid ones
    included. ``require_think``: the turn format needs the think block. ``feedback``: show the
    game's answer to the action before the view (None: :data:`FEEDBACK_BY_GAME`).
    ``max_instances``: game instances the env keeps
    in the JVM (least recently used ones are reused)."""

    max_turns: int = 10
    require_think: bool = True
    feedback: bool | None = None
    system_role: bool = True
    max_instances: int = 64
    reward: GameRewardConfig = field(default_factory=GameRewardConfig)

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_instances < 1:
            raise ValueError(
                f"max_turns={self.max_turns} and max_instances={self.max_instances} must be >= 1"
            )


class _Instance:
    """A game instance in the JVM and where it stands: (game key, history) or None."""

    def __init__(self, handle: Any, generation: int) -> None:
        self.handle, self.generation = handle, generation
        self.loaded: tuple[str, str] | None = None
        self.view: GameView | None = None
        self.position: tuple[Any, ...] | None = None


class GameEnv:
    """Text games behind the search-QA environment interface (module docstring)."""

    stop_strings: tuple[str, ...] = STOP_STRINGS
    # T²PO's thinking intervention (at2po.rollout.turns.intervention_ids): a forced end of thought
    # leads straight into the action block, so the policy still chooses the action.
    think_tags: tuple[str | None, str] = ("<think>", "</think>")
    intervention_text: str = "</think>\n<action>"

    def __init__(self, config: GameEnvConfig | None = None, host: JvmHost | None = None) -> None:
        self.config = config or GameEnvConfig()
        self.host = host or process_host()
        self._idle: OrderedDict[int, _Instance] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ episodes
    def reset(self, example: GameExample) -> GameState:
        """The start state of ``example`` (a JVM found dead is restarted and reset retried)."""
        try:
            view, task = self._start(example)
        except JvmDied:
            view, task = self._start(example)
        first_view = view.render(feedback=False)
        messages = build_prompt_messages(task, first_view, system_role=self.config.system_role)
        prompt = tuple((message["role"], message["content"]) for message in messages)
        return GameState(example, prompt, view, self.host.generation)

    def step(self, state: GameState, action_text: str) -> GameStepOutcome:
        """Answer one agent turn (the text generated in that turn only)."""
        if state.done:
            raise ValueError(
                f"the episode on {state.example.id!r} already ended ({state.finish}); "
                "start a new one with reset()"
            )
        self._check_generation(state)
        action = parse_turn(action_text, require_think=self.config.require_think)
        command = self._command(state, action)
        if command is None:
            problem = action.problem or "not_valid"
            return self._advance(state, GameTurn(action_text, action, "", ""), state.view, problem)
        view = self._play(state, command)
        turn = GameTurn(action_text, action, command, "")
        return self._advance(state, turn, view, None, history=(*state.history, command))

    def step_batch(
        self, states: Sequence[GameState], action_texts: Sequence[str]
    ) -> list[GameStepOutcome]:
        """Answer many turns, one after the other (a game step takes about a millisecond)."""
        if len(states) != len(action_texts):
            raise ValueError(f"got {len(states)} states but {len(action_texts)} action texts")
        return [self.step(s, t) for s, t in zip(states, action_texts, strict=True)]

    def end_episode(self, state: GameState, action_text: str, reason: str) -> GameState:
        """End an episode from outside with a last turn (e.g. ``length``: the token budget cut
        it); the turn is recorded as written, no command reaches the game."""
        if state.done:
            raise ValueError(f"the episode on {state.example.id!r} already ended ({state.finish})")
        if not reason:
            raise ValueError("give a reason for stopping the episode, e.g. 'length'")
        action = parse_turn(action_text, require_think=self.config.require_think)
        turn = GameTurn(action_text, action, "", "")
        return replace(state, turns=(*state.turns, turn), finish=reason)

    def reward(self, state: GameState) -> RewardResult:
        """The episode reward of the module docstring and its sub-scores: ``em`` and ``success``
        (won: 1/0), ``score`` (the game's final score), ``format_ok`` (no invalid turn),
        ``answered`` (the game ended the episode), ``tool_calls`` (commands sent to the game),
        ``invalid_turns``."""
        cfg = self.config.reward
        success = float(state.won)
        reward = (
            success
            + cfg.progress_weight * state.view.score
            - cfg.invalid_penalty * state.invalid_turns
        )
        scores = {
            "em": success,
            "success": success,
            "score": state.view.score,
            "format_ok": float(state.invalid_turns == 0),
            "answered": float(state.finish == "answer"),
            "tool_calls": float(len(state.history)),
            "invalid_turns": float(state.invalid_turns),
        }
        return RewardResult(reward=reward, scores=scores)

    def expert_path(self, example: GameExample) -> list[str]:
        """The game's gold command sequence for ``example`` (TWX's oracle path)."""
        instance = self._fresh_instance(example, gold=True)
        try:
            return [
                str(c) for c in self.host.call(lambda _: instance.handle.getGoldActionSequence())
            ]
        finally:
            self._release(instance)

    def close(self) -> None:
        """Forget this env's game instances (the JVM is the process's: see
        :func:`~at2po.tasks.games.jvm.process_host`; ``host.close()`` stops it)."""
        with self._lock:
            self._idle.clear()

    # ------------------------------------------------------------------ internals
    def _check_generation(self, state: GameState) -> None:
        """Raise :class:`JvmDied` when ``state``'s game lived in a JVM that has died (a dead JVM
        found here is restarted first), whether or not this turn would reach the game."""
        self.host.check_alive()
        if state.generation != self.host.generation:
            raise JvmDied(
                f"the JVM of the game {state.example.id} died; its episode has ended "
                f"(generation {state.generation}, now {self.host.generation})"
            )

    def _feedback(self, example: GameExample) -> bool:
        if self.config.feedback is None:
            return FEEDBACK_BY_GAME[example.game]
        return self.config.feedback

    def _command(self, state: GameState, action: GameAction) -> str | None:
        """The game command of a well-formed turn naming a valid action, else None."""
        if not action.valid_format:
            return None
        by_normal = {normalize_command(a): a for a in state.view.valid_actions}
        return by_normal.get(action.command)

    def _advance(
        self,
        state: GameState,
        turn: GameTurn,
        view: GameView,
        problem: str | None,
        history: tuple[str, ...] | None = None,
    ) -> GameStepOutcome:
        finish = None
        if problem is None and view.ended:
            finish = "answer"
        elif state.steps + 1 >= self.config.max_turns:
            finish = "turn_limit"
        observation = None
        if finish is None:
            body = view.render(feedback=self._feedback(state.example))
            if problem is not None:
                body = f"{PROBLEMS[problem]}\n{body}"
            observation = format_observation(body)
        new_state = replace(
            state,
            view=view,
            history=state.history if history is None else history,
            turns=(*state.turns, replace(turn, observation=observation or "")),
            finish=finish,
        )
        info = {
            "action": "invalid" if problem is not None else "step",
            "problem": problem,
            "finish": finish,
            "anchor": view.anchor,
            "reward": view.score - state.view.score,
        }
        return GameStepOutcome(new_state, observation, finish is not None, info)

    def _start(self, example: GameExample) -> tuple[GameView, str]:
        instance = self._fresh_instance(example, gold=False)
        task = str(self.host.call(lambda _: instance.handle.getTaskDescription()))
        view = instance.view
        instance.position = (example, ())
        self._release(instance)
        return view, task

    def _play(self, state: GameState, command: str) -> GameView:
        """Step ``state``'s game by ``command`` on an instance standing at its history."""
        instance = self._take((state.example, state.history))
        if instance is None:
            instance = self._fresh_instance(state.example, gold=False)
            for earlier in state.history:
                self._send(instance, earlier)
        view = self._send(instance, command)
        instance.position = (state.example, (*state.history, command))
        self._release(instance)
        return view

    def _send(self, instance: _Instance, command: str) -> GameView:
        text = self.host.call(lambda _: instance.handle.stepJSON(command))
        instance.view = GameView.from_json(text)
        return instance.view

    def _fresh_instance(self, example: GameExample, *, gold: bool) -> _Instance:
        """An instance with ``example``'s game just generated (reusing an idle one if the pool
        is full)."""
        instance = self._recycle()
        settings = (example.game, example.params)

        def generate(_: Any) -> str:
            if instance.loaded != settings:
                message = instance.handle.load(example.game, example.params)
                if message:
                    raise ValueError(
                        f"TextWorldExpress refused {example.id}: {str(message).strip()}"
                    )
                instance.loaded = settings
            return instance.handle.generateNewGameJSON(example.seed, example.fold, gold)

        instance.view = GameView.from_json(self.host.call(generate))
        instance.position = None
        return instance

    def _take(self, position: tuple[Any, ...]) -> _Instance | None:
        """An idle instance of this JVM standing at ``position``, removed from the pool."""
        with self._lock:
            for key, instance in self._idle.items():
                if instance.position == position and instance.generation == self.host.generation:
                    del self._idle[key]
                    return instance
        return None

    def _recycle(self) -> _Instance:
        """A new instance while under ``max_instances``, else the least recently used idle one."""
        with self._lock:
            for key, instance in list(self._idle.items()):
                if instance.generation != self.host.generation:
                    del self._idle[key]
            if self._idle and len(self._idle) >= self.config.max_instances:
                return self._idle.popitem(last=False)[1]
        generation = self.host.generation
        return _Instance(self.host.new_instance(), generation)

    def _release(self, instance: _Instance) -> None:
        with self._lock:
            self._idle[id(instance)] = instance
            self._idle.move_to_end(id(instance))
