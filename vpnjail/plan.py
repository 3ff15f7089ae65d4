"""Plans: what bringing a profile up or down does, as data.

A plan is an ordered list of steps. Each step says what it does (files to
write, commands to run, daemons to start) and how to undo it. ``render``
prints a plan; ``up`` carries it out and, when a step fails, undoes the
steps already done in reverse order, so a failed profile leaves nothing.
"""

import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {self.path} (mode {self.mode:04o})"


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    # "host": the host stack the driver works in; "jail": the profile's
    # stack; "netns" (Linux): its network namespace before the sandbox
    # exists; "system": as is, in no particular stack.
    where: str = "host"
    input_text: str | None = None
    ok_codes: tuple[int, ...] = (0,)

    def describe(self) -> str:
        text = shlex.join(self.argv)
        if self.input_text is not None:
            text += " <<EOF\n" + self.input_text.rstrip("\n") + "\nEOF"
        return f"[{self.where}] {text}"


@dataclass(frozen=True)
class Spawn:
    """A long-running process, detached, its pid recorded under *name*."""

    name: str
    argv: tuple[str, ...]
    where: str = "jail"
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return f"[{self.where}] start {self.name}: {env + ' ' if env else ''}" + (
            shlex.join(self.argv)
        )


Action = WriteFile | Run | Spawn


@dataclass(frozen=True)
class Step:
    title: str
    do: tuple[Action, ...]
    undo: tuple[Action, ...] = ()


@dataclass
class Plan:
    profile: str
    steps: list[Step] = field(default_factory=list)

    def add(self, title: str, do: list[Action], undo: list[Action] = ()) -> None:
        self.steps.append(Step(title, tuple(do), tuple(undo)))

    def files(self) -> list[WriteFile]:
        return [a for s in self.steps for a in s.do if isinstance(a, WriteFile)]

    def render(self, argv_of=None, first: int = 1) -> str:
        """The plan as text; *argv_of(action)* gives the real command line."""
        lines = [f"# profile {self.profile}"] if first == 1 else []
        for number, step in enumerate(self.steps, first):
            lines.append(f"## {number}. {step.title}")
            for action in step.do:
                lines.append(_describe(action, argv_of))
                if isinstance(action, WriteFile):
                    lines += ["  | " + line for line in action.content.splitlines()]
            for action in step.undo:
                lines.append(f"  undo: {_describe(action, argv_of)}")
        return "\n".join(lines) + "\n"


def _describe(action: Action, argv_of) -> str:
    if argv_of is None or isinstance(action, WriteFile):
        return action.describe()
    text = action.describe()
    where, _, rest = text.partition("] ")
    shown = shlex.join(argv_of(action))
    if isinstance(action, Spawn):
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in action.env)
        return f"{where}] start {action.name}: {env}{shown}"
    if action.input_text is not None:
        shown += rest[rest.index(" <<EOF") :]
    return f"{where}] {shown}"
