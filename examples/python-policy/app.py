"""An eligo policy written in Python (componentize-py): solutions must claim at
least their job's target, and at least `min_target` if the settings give one.

Build it into a component against eligo's contract, then use it as any plugin:

    componentize-py -d ../../wit -w policy componentize app -o py-min-target.wasm
    eligo plugin test py-min-target.wasm cases.json

The runtime imports WASI; eligo offers it a deny-all one (no files, network,
environment or clock). A solution claiming target 0 is answered with what the
plugin could see of those, so a test can check that it saw nothing.
"""
import json
import os
import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

MIN_TARGET = 0


def probe() -> str:
    """What this plugin can see of the machine: nothing, under eligo."""
    try:
        open("/etc/hostname").close()
        files = "readable"
    except OSError:
        files = "denied"
    return f"probe: env={len(os.environ)} clock={time.time()} files={files}"


class Decisions(exports.Decisions):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(name="py-min-target", version="0.1.0", hooks=[types.Hook.VALIDATE_SOLUTION])

    def configure(self, settings: str) -> None:
        global MIN_TARGET
        parsed = json.loads(settings)
        unknown = sorted(set(parsed) - {"min_target"})
        if unknown:
            raise Err(f"unknown settings: {unknown}")
        MIN_TARGET = int(parsed.get("min_target", 0))

    def validate_solution(self, job: types.Job, solution: types.Solution) -> None:
        if solution.solution_target == 0:
            raise Err(probe())
        floor = max(job.proof_target, MIN_TARGET)
        if solution.solution_target < floor:
            raise Err(f"solution_target {solution.solution_target} is under {floor}")

    # The hooks below are not listed in info(): eligo never calls them.
    def admit_connection(self, request, now):
        return None

    def admit_worker(self, welcome, now):
        return types.WorkerAdmission(profile=types.WorkerProfile(tags=[], limits=[]), state=0)

    def admit_job(self, job, state, now):
        return types.JobAdmission(job=job, state=state)

    def offer_job(self, job, profiles, workers, now):
        return types.JobOffer(workers=list(range(len(workers.states))), states=list(workers.states))

    def offer_solution(self, job, solution, nodes, now):
        return list(range(len(nodes)))

    def challenge_answer(self, request, once):
        raise Err("this plugin does not take the challenge")

    def check_challenge(self, request, once, answer, now):
        return None
