#!/usr/bin/env bash
# ZeRO-1 (tests/test_zero_mpi.cpp) under 1, 2 and 3 ranks: sharded AdamW equals AdamW on the summed
# gradient, parameters identical on every rank, padding zero, state split, volumes as the formula.
source "$(dirname "$0")/common.sh"
run_mpi_gtest test_zero_mpi 1 2 3
