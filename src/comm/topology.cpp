#include "metapo/comm/topology.h"

#include <mpi.h>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/error.h"

namespace metapo {

Topology::Topology()
    : world_(std::make_unique<SelfComm>()),
      tp_(std::make_unique<SelfComm>()),
      pp_(std::make_unique<SelfComm>()),
      dp_(std::make_unique<SelfComm>()),
      mp_(std::make_unique<SelfComm>()) {}

Topology::Topology(Topology&&) noexcept = default;
Topology& Topology::operator=(Topology&&) noexcept = default;
Topology::~Topology() = default;

Topology Topology::create(int tp, int pp) {
  Topology t;
  MPI_Comm_size(MPI_COMM_WORLD, &t.world_size);
  MPI_Comm_rank(MPI_COMM_WORLD, &t.world_rank);
  MP_CHECK(tp >= 1 && pp >= 1, "--tp and --pp must be at least 1 (got tp=", tp, ", pp=", pp, ")");
  MP_CHECK(t.world_size % (tp * pp) == 0, "world size ", t.world_size,
           " is not divisible by --tp x --pp = ", tp * pp);
  t.tp = tp, t.pp = pp, t.dp = t.world_size / (tp * pp);
  // rank = (dp_rank * pp + pp_rank) * tp + tp_rank
  t.tp_rank = t.world_rank % tp;
  t.pp_rank = (t.world_rank / tp) % pp;
  t.dp_rank = t.world_rank / (tp * pp);
  t.world_ = std::make_unique<MpiComm>(MPI_COMM_WORLD);
  t.tp_ = t.world_->split(t.dp_rank * pp + t.pp_rank, t.tp_rank);
  t.pp_ = t.world_->split(t.dp_rank * tp + t.tp_rank, t.pp_rank);
  t.dp_ = t.world_->split(t.pp_rank * tp + t.tp_rank, t.dp_rank);
  t.mp_ = t.world_->split(t.dp_rank, t.pp_rank * tp + t.tp_rank);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, t.world_rank, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &t.local_size);
  MPI_Comm_rank(node, &t.local_rank);
  MPI_Comm_free(&node);
  return t;
}

}  // namespace metapo
