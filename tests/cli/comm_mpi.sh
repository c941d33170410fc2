#!/usr/bin/env bash
# The typed and asynchronous Comm calls of MpiComm (tests/test_comm_mpi.cpp) under 1, 2 and 3 ranks:
# float sums identical on every rank, bf16 sums rounded once from fp32, exact integer reductions,
# requests, the non-blocking barrier, split, dup, gather and the traffic counts.
source "$(dirname "$0")/common.sh"
run_mpi_gtest test_comm_mpi 1 2 3
