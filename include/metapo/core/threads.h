#pragma once

namespace metapo {

// Gives this process its share of the node's cores: OMP_NUM_THREADS when set, else
// hardware threads / ranks_on_node (at least 1); either way at most the cores of its CPU mask.
// OpenBLAS (OpenMP build) follows the same setting. Returns the thread count chosen.
int configure_threads(int ranks_on_node);

}  // namespace metapo
