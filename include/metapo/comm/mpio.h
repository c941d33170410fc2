// HDF5's MPI-IO file driver on a Comm: the I/O layer opens parallel HDF5 files through this, without
// naming MPI itself.
#pragma once
#include <cstdint>

#include "metapo/comm/comm.h"

namespace metapo {

// H5Pset_fapl_mpio(fapl, the MPI communicator of comm, MPI_INFO_NULL): a file opened with the
// file-access property list fapl (an hid_t, int64_t since HDF5 1.10) is accessed collectively by
// comm's ranks. comm must be an MpiComm or a SelfComm (then MPI_COMM_SELF; MPI must be running);
// throws metapo::Error otherwise, or when HDF5 refuses. Local (HDF5 duplicates the communicator when
// the file is opened, collectively).
void set_fapl_mpio(int64_t fapl, const Comm& comm);

}  // namespace metapo
