// MPI's lifetime in a program and the end of a job: what main() and the hang watchdog need, so that
// neither makes an MPI call itself.
#pragma once

namespace metapo {

// MPI for the life of the process: MPI_Init_thread at construction (MPI_THREAD_FUNNELED: only the
// main thread communicates; abort_job excepted), MPI_Finalize at destruction. One per process, made
// first in main() so that every communicator (Topology, Comm) is freed before MPI ends.
class MpiSession {
 public:
  MpiSession(int& argc, char**& argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int world_rank() const { return rank_; }
  int world_size() const { return size_; }

 private:
  int rank_ = 0, size_ = 1;
};

// Ends every rank of the job with exit status exit_code (MPI_Abort on the world). Callable from any
// thread, also while the main thread is blocked in a collective that will never complete; should the
// abort return, the process ends with _Exit(exit_code).
[[noreturn]] void abort_job(int exit_code);

}  // namespace metapo
