# Scheduler benchmark: include this file from the top-level Makefile.
#
# bench-scheduler simulates the nixpkgs-shaped graph under the fifo, hydra
# and gradient policies, prints the table recorded in docs/scheduler.md
# and fails when a goal is missed.
.PHONY: bench-scheduler
bench-scheduler:
	$(GO) run ./scheduler/sim/simbench
