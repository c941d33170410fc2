#!/usr/bin/env bash
# The parallel model writer (tests/test_hf_save_mpi.cpp) under 2 to 4 ranks (one rank: every single-rank run's final/): any split of the model
# over the ranks writes the bytes of the one-process writer; several files with an index read back
# bit for bit; a split with a gap fails on every rank and leaves nothing.
source "$(dirname "$0")/common.sh"
run_mpi_gtest test_hf_save_mpi 2 3 4
