#!/usr/bin/env bash
# The checkpoint file (tests/test_checkpoint_file_mpi.cpp) under 1, 2 and 3 ranks: any partition of
# an array over the ranks reads back bit for bit under any other, with one rank's checksum; a flipped
# byte or a truncated file fails on every rank.
source "$(dirname "$0")/common.sh"
export HDF5_USE_FILE_LOCKING=FALSE
run_mpi_gtest test_checkpoint_file_mpi 1 2 3
