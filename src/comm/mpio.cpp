#include "metapo/comm/mpio.h"

#include <hdf5.h>
#include <mpi.h>

#include <type_traits>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/error.h"

namespace metapo {

static_assert(std::is_same_v<hid_t, int64_t>, "mpio.h passes an hid_t as int64_t (HDF5 >= 1.10)");

void set_fapl_mpio(int64_t fapl, const Comm& comm) {
  MPI_Comm c = MPI_COMM_NULL;
  if (const auto* m = dynamic_cast<const MpiComm*>(&comm))
    c = m->handle();
  else if (dynamic_cast<const SelfComm*>(&comm))
    c = MPI_COMM_SELF;
  MP_CHECK(c != MPI_COMM_NULL, "parallel HDF5: the communicator is neither an MpiComm nor a SelfComm");
  MP_CHECK(H5Pset_fapl_mpio(hid_t(fapl), c, MPI_INFO_NULL) >= 0, "parallel HDF5: H5Pset_fapl_mpio failed");
}

}  // namespace metapo
