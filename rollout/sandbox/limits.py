"""INTERIM: per-slot limits until sandbox_image.config.SlotLimits lands (issue 18 branch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SlotLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    isolation: Literal["auto", "bwrap", "required", "none"] = "auto"
    network: bool = False
    memory_mb: int | None = 4096
    pids: int | None = 1024
    output_cap: int = 1 << 20
    exec_timeout_cap: float = 1800.0
    file_cap: int = 64 << 20
    env: dict[str, str] = Field(default_factory=dict)
    expose: tuple[str, ...] = ()

    def to_argv(self) -> list[str]:
        argv = ["--isolation", self.isolation, "--network", "on" if self.network else "off",
                "--memory-mb", str(self.memory_mb or 0), "--pids", str(self.pids or 0),
                "--output-cap", str(self.output_cap), "--max-timeout",
                str(self.exec_timeout_cap), "--file-cap", str(self.file_cap)]
        for path in dict.fromkeys(self.expose):
            argv += ["--expose", path]
        for key, value in self.env.items():
            argv += ["--env", f"{key}={value}"]
        return argv
