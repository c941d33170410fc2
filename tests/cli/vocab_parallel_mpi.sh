#!/usr/bin/env bash
# Vocab-parallel embedding and log-probs (tests/test_vocab_parallel_mpi.cpp) under 1, 2 and 3 ranks:
# every rank holds its vocabulary shard; log-probs, dh, row dots, the gathered dW / dE (padding zero)
# and the embedding equal the single-rank kernels on the full matrices.
source "$(dirname "$0")/common.sh"
run_mpi_gtest test_vocab_parallel_mpi 1 2 3
