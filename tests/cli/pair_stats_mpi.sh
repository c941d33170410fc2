#!/usr/bin/env bash
# The distributed pair statistics table and MpiComm (tests/test_pair_stats_mpi.cpp) under 1, 2 and 3
# ranks: every run must reproduce the one-process table bit for bit, fetch any ids from any rank, and
# reload a table saved at its rank count under every smaller one (3 -> 2 included).
source "$(dirname "$0")/common.sh"
run_mpi_gtest test_pair_stats_mpi 1 2 3
