// The process grid: world = DP x PP x TP, TP innermost (the ranks of a tensor-parallel group are
// adjacent, so on one node). Each axis has its own communicator, split from the world; the Topology
// owns them and hands them out as Comm objects.
#pragma once
#include <memory>

#include "metapo/comm/comm.h"

namespace metapo {

struct Topology {
  int world_size = 1, world_rank = 0;
  int tp = 1, pp = 1, dp = 1;              // group sizes
  int tp_rank = 0, pp_rank = 0, dp_rank = 0;
  int local_size = 1, local_rank = 0;      // ranks on this node (for thread counts)
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp - 1; }
  // The rank that writes what only the last pipeline stage knows (MetaPO's state): DP 0, TP 0 there.
  bool is_last_stage_root() const { return dp_rank == 0 && tp_rank == 0 && last_stage(); }
  bool is_root() const { return world_rank == 0; }

  // The communicators of this rank's groups, owned by the Topology (valid while it lives). Their
  // traffic is the run's own bookkeeping (agreements, statistics, gathers, file I/O): the model and
  // the optimizer communicate over their own (Comm::dup), whose traffic the step report counts.
  Comm& world_comm() const { return *world_; }
  Comm& tp_comm() const { return *tp_; }
  Comm& pp_comm() const { return *pp_; }
  Comm& dp_comm() const { return *dp_; }
  // The ranks of one model replica (its PP x TP ranks, ordered pp_rank * tp + tp_rank): where a
  // replica's shards are assembled and its gradient norm summed.
  Comm& mp_comm() const { return *mp_; }

  // One process, no MPI needed: every group is a SelfComm.
  Topology();
  // Collective over MPI_COMM_WORLD: splits it; throws metapo::Error naming the options when
  // world % (tp*pp) != 0.
  static Topology create(int tp, int pp);
  Topology(Topology&&) noexcept;
  Topology& operator=(Topology&&) noexcept;
  ~Topology();

 private:
  std::unique_ptr<Comm> world_, tp_, pp_, dp_, mp_;
};

}  // namespace metapo
