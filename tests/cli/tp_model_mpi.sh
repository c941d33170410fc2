#!/usr/bin/env bash
# Tensor-parallel LlamaModel (tests/test_tp_model_mpi.cpp) under 1, 2 and 4 ranks: each rank holds its
# shard; log-probs, the gathered gradient of every tensor, the ghost seq_dots (accumulate on and off)
# equal the single-rank model on the full buffers; split → gather is exact; TP sizes that do not divide
# heads / kv heads / intermediate_size fail with a message naming the field and the size.
source "$(dirname "$0")/common.sh"
run_mpi_gtest test_tp_model_mpi 1 2 4
