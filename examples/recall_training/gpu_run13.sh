#!/usr/bin/env bash
# Run 13 of the recall training (issue 6): run 12's Based seed 0 (run 8's recipe at init 0.1), alone on the GPU and
# longer: 10.5 minutes of training over two calls (run 12: 6.8 minutes, two runs sharing the GPU). Run 12's seed 0
# showed a JRT effect for Based for the first time (+9.5 to +14.5 points at 8-24 records, target +15) but was still
# on the curriculum's plateau (level 0.13) until 210 s of its 408, so it learned recall late: more training is the
# next thing to try. NOTES.md, "Run 13". From the repository root:
#
#   first call:  source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; CALL_MINUTES=3.2 \
#                  DEADLINE_MINUTES=4.2 bash examples/recall_training/gpu_run13.sh
#   second call (the first call's run13-results.tgz and run13-models.tgz.aa copied into .run13/, git-ignored,
#   and carried with .whl):
#                source benchmarks/gpu_setup.sh > /tmp/setup.txt 2>&1; set +e; tar xzf .run13/run13-results.tgz -C /tmp;
#                cat .run13/run13-models.tgz.* | tar xzf - -C /tmp; RESUME=/tmp/run13/based \
#                  bash examples/recall_training/gpu_run13.sh
#
# Each call leaves $OUT/run13.log, $OUT/run13-results.tgz and $OUT/run13-models.tgz.aa (the second also RESULTS.md).
MINUTES=${MINUTES:-10.5}
EVAL_MINUTES=${EVAL_MINUTES:-1.3}
DEADLINE_MINUTES=${DEADLINE_MINUTES:-9.2}
RECIPE_EXTRA=(--init-range 0.1)  # after run 8's 0.02: the last one given wins
ARCH=${ARCH:-based} RUN_NAME=run13 . "$(dirname "${BASH_SOURCE[0]}")/gpu_run8.sh"
