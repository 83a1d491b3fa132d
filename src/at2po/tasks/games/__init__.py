"""Text games (TextWorldExpress) behind the search-QA environment interface; see docs/games.md.

:mod:`~at2po.tasks.games.game_format` (prompt, tags, the linear-time turn parser),
:mod:`~at2po.tasks.games.jvm` (one JVM per process, restarted when it dies),
:mod:`~at2po.tasks.games.env` (the environment) and :mod:`~at2po.tasks.games.expert` (a scripted
expert for SFT demonstrations).
"""

from at2po.tasks.games.env import (
    GAMES,
    SMALL_SETTINGS,
    GameEnv,
    GameEnvConfig,
    GameExample,
    GameRewardConfig,
    GameState,
    GameStepOutcome,
    GameView,
)
from at2po.tasks.games.game_format import GameAction, parse_turn
from at2po.tasks.games.jvm import JvmDied, JvmHost, process_host

__all__ = [
    "GAMES",
    "SMALL_SETTINGS",
    "GameAction",
    "GameEnv",
    "GameEnvConfig",
    "GameExample",
    "GameRewardConfig",
    "GameState",
    "GameStepOutcome",
    "GameView",
    "JvmDied",
    "JvmHost",
    "parse_turn",
    "process_host",
]
