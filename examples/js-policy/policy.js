// An eligo policy written in JavaScript (componentize-js, from npm): solutions
// must claim at least their job's target, and at least `min_target` if the
// settings give one — the same rule as examples/python-policy, side by side.
//
// Build it into a component against eligo's contract, then use it as any plugin:
//
//     npx componentize-js policy.js --wit ../../wit --world-name policy \
//         -d stdio random clocks http fetch-event -o js-min-target.wasm
//     eligo plugin test js-min-target.wasm cases.json
//
// Built with every WASI feature of the engine (StarlingMonkey) turned off, the
// component imports nothing but eligo's contract: no files, network,
// environment or clock to deny. `Date.now()` answers the moment the component
// was built (the engine's snapshot), never the machine's clock. A solution
// claiming target 0 is answered with what the plugin could see, so a test can
// check that it saw nothing.
//
// In the bindings, WIT's u64 is a BigInt, records are objects with camelCase
// fields, and a `result<_, reason>` is an error when the function throws.

let minTarget = 0n;

function probe() {
  const env = typeof process === "undefined" ? 0 : Object.keys(process.env || {}).length;
  return `probe: env=${env} process=${typeof process}`;
}

export const decisions = {
  info() {
    return { name: "js-min-target", version: "0.1.0", hooks: ["validate-solution"] };
  },

  configure(settings) {
    const parsed = JSON.parse(settings);
    const unknown = Object.keys(parsed).filter((k) => k !== "min_target").sort();
    if (unknown.length) throw `unknown settings: ${unknown.join(", ")}`;
    minTarget = BigInt(parsed.min_target ?? 0);
  },

  validateSolution(job, solution) {
    if (solution.solutionTarget === 0n) throw probe();
    const floor = job.proofTarget > minTarget ? job.proofTarget : minTarget;
    if (solution.solutionTarget < floor) {
      throw `solution_target ${solution.solutionTarget} is under ${floor}`;
    }
  },

  // The hooks below are not listed in info(): eligo never calls them.
  admitConnection(request, now) {},
  admitWorker(welcome, now) {
    return { profile: { tags: [], limits: [] }, state: 0n };
  },
  admitJob(job, state, now) {
    return { job, state };
  },
  offerJob(job, profiles, workers, now) {
    return { workers: [], states: [] };
  },
  offerSolution(job, solution, nodes, now) {
    return [];
  },
  challengeAnswer(request, once) {
    throw "no challenge";
  },
  checkChallenge(request, once, answer, now) {},
};
