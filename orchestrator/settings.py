"""Stage settings from a TOML file and environment variables (pydantic-settings).

    # orchestrator.toml
    backend = "sqlite:///orchestrator.db"
    [stages.double]
    visibility_timeout_s = 60
    max_receives = 8

``ORCHESTRATOR_STAGES__DOUBLE__MAX_RECEIVES=9`` overrides the file; the file overrides the
values in code. Every setting, its unit and its default is below.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from orchestrator.errors import ConfigError
from orchestrator.pipeline import Pipeline
from orchestrator.stage import RENAMED_SETTINGS


class StageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    visibility_timeout_s: float | None = Field(
        None, description="lease taken on each receive, seconds (default 30; was `visibility_timeout`)",
        validation_alias=AliasChoices("visibility_timeout_s", "visibility_timeout"))
    max_receives: int | None = Field(None, description="handler attempts before FAILED + dead letter (default 5)")
    time_limit_s: float | None = Field(None, description="heartbeat stops extending after this, seconds (default none)")
    retry_base_s: float | None = Field(None, description="first retry delay, doubled each attempt, seconds (default 1)")
    retry_max_s: float | None = Field(None, description="longest retry delay, seconds (default 300)")
    batch_size: int | None = Field(None, description="messages per receive, up to 100 on SQLite, PostgreSQL "
                                   "and in memory, 10 on SQS (default: sized to the handlers' pace)")
    wait_s: float | None = Field(None, description="long-poll wait per receive, seconds (default 1; at 0 an empty receive is followed by a 20 ms pause)")
    delay_s: float | None = Field(None, description="delay of every message of the source queue, seconds (default 0)")
    max_body_bytes: int | None = Field(None, description="largest accepted body, bytes (default 262144)")
    begin: Literal["deferred", "eager", "lazy"] | None = Field(
        None, description="when the begin is written: deferred (only for a step still running after "
        "begin_after_s; a redelivery at once), eager (before every handler) or lazy (never) (default deferred; "
        "was `claim`)", validation_alias=AliasChoices("begin", "claim"))
    begin_after_s: float | None = Field(
        None, description="with begin=deferred: seconds a round's handlers run before their begin is written "
        "(default 1)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", env_nested_delimiter="__", extra="ignore")
    file_values: ClassVar[dict[str, Any]] = {}

    backend: str | None = Field(None, description="backend URL (default sqlite:///orchestrator.db)")
    log_level: Literal["debug", "info", "warning", "error"] | None = Field(
        None, description="debug, info, warning or error (default info)")
    stages: dict[str, StageSettings] = Field(default_factory=dict)
    #: stage -> the settings the config file set (the rest came from the environment)
    _from_file: dict[str, set[str]] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # lowest priority last: the file, under the environment, under explicit values
        return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=dict(cls.file_values))


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from ``path`` (TOML) and the environment; ``ConfigError`` when invalid."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, ValueError) as exc:  # a directory, no permission, a NUL in the name
            raise ConfigError(f"cannot read config file {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"invalid config file {path}: {exc}") from exc
    Settings.file_values = values
    try:
        settings = Settings()
        settings._from_file = {name: {RENAMED_SETTINGS.get(str(k), str(k)) for k in v}
                               for name, v in values.get("stages", {}).items() if isinstance(v, dict)}
        return settings
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(f"invalid settings: {problems}") from exc
    finally:
        Settings.file_values = {}


def apply_settings(pipeline: Pipeline, settings: Settings) -> None:
    """Override the stages' settings in place; unknown stage names are an error. Each stage
    remembers where an overridden setting came from (``Stage.setting_sources``: the config
    file or the environment), for ``doctor``."""
    from_file: dict[str, set[str]] = getattr(settings, "_from_file", {})
    for name, stage_settings in settings.stages.items():
        stage = pipeline.get(name)
        values: dict[str, Any] = stage_settings.model_dump(exclude_none=True)
        for key, value in values.items():
            setattr(stage, key, value)
            env = f"ORCHESTRATOR_STAGES__{name}__{key}".upper()
            in_env = any(k.upper() == env for k in os.environ)
            stage.setting_sources[key] = "environment" if in_env or key not in from_file.get(name, set()) \
                else "config file"


#: the settings ``doctor`` shows for every stage
SHOWN = tuple(StageSettings.model_fields)


def settings_table() -> str:
    """Markdown table of every stage setting with its unit and default (for docs/reference.md)."""
    rows = ["| setting | meaning |", "|---|---|"]
    for name, f in StageSettings.model_fields.items():
        rows.append(f"| `{name}` | {f.description} |")
    return "\n".join(rows)
