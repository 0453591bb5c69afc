// The MPI backend: blocking collectives on CPU tensors, and the
// communication thread that runs the async all-reduces in order.
#include "comm/mpi_communicator.h"

#include "comm/watchdog.h"
#include "common/error.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <condition_variable>
#include <cstring>
#include <cstdlib>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace dtrain {

void check_mpi(int code, const char* expression, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char message[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, message, &length);
  throw CommError(std::string(expression) + " failed at " + file + ":" + std::to_string(line) +
                  ": " + std::string(message, length));
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided));
  }
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void MpiSession::abort_world(int exit_code) {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::exit(exit_code);  // MPI_Abort does not return; this keeps [[noreturn]] honest.
}

namespace {

// Sums 16-bit floats the way the reduced-precision reducer needs: each
// element is widened to float, added, and rounded back once.
template <typename Half>
void sum_16bit(void* in, void* inout, int* length, MPI_Datatype*) {
  const auto* a = static_cast<const Half*>(in);
  auto* b = static_cast<Half*>(inout);
  for (int i = 0; i < *length; ++i) b[i] = Half(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

MPI_Op mpi_op_of(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

void require_cpu(const at::Tensor& tensor) {
  if (!tensor.device().is_cpu()) {
    throw Error("MPI backend needs CPU tensors; use the NCCL backend for GPU tensors");
  }
}

int checked_count(const at::Tensor& tensor) {
  if (tensor.numel() > std::numeric_limits<int>::max()) {
    throw Error("tensor of " + std::to_string(tensor.numel()) +
                " elements is too large for one MPI call");
  }
  return static_cast<int>(tensor.numel());
}

}  // namespace

// Runs queued collectives one at a time, in order, on its own thread.
class MpiCommunicator::Worker {
 public:
  struct Job {
    std::function<void()> run;
    bool done = false;
    std::exception_ptr error;
  };

  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

  std::shared_ptr<Job> submit(std::function<void()> run) {
    auto job = std::make_shared<Job>();
    job->run = std::move(run);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(job);
      ++unfinished_;
    }
    changed_.notify_all();
    return job;
  }

  void wait(const std::shared_ptr<Job>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return job->done; });
    if (job->error) std::rethrow_exception(job->error);
  }

  bool done(const std::shared_ptr<Job>& job) {
    std::lock_guard<std::mutex> lock(mutex_);
    return job->done;
  }

  void drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return unfinished_ == 0; });
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      auto job = queue_.front();
      queue_.pop_front();
      const bool skip = failed_;
      lock.unlock();
      if (skip) {
        // MPI may be broken: do not call it again; the caller aborts the job.
        job->error = std::make_exception_ptr(CommError("collective skipped after an earlier one failed"));
      } else {
        try {
          job->run();
        } catch (...) {
          job->error = std::current_exception();
        }
      }
      lock.lock();
      if (job->error) failed_ = true;
      job->done = true;
      --unfinished_;
      changed_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::shared_ptr<Job>> queue_;
  int unfinished_ = 0;
  bool stopping_ = false;
  bool failed_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

namespace {

class WorkerWork final : public Work {
 public:
  WorkerWork(MpiCommunicator::Worker* worker, std::shared_ptr<MpiCommunicator::Worker::Job> job)
      : worker_(worker), job_(std::move(job)) {}
  ~WorkerWork() override {
    try {
      worker_->wait(job_);  // the buffer must outlive the collective
    } catch (...) {
    }
  }
  void wait() override { worker_->wait(job_); }
  bool test() override { return worker_->done(job_); }

 private:
  MpiCommunicator::Worker* worker_;
  std::shared_ptr<MpiCommunicator::Worker::Job> job_;
};

}  // namespace

MpiCommunicator::MpiCommunicator() : comm_(MPI_COMM_WORLD) {
  int provided = MPI_THREAD_SINGLE;
  MPI_CHECK(MPI_Query_thread(&provided));
  if (provided >= MPI_THREAD_SERIALIZED) worker_ = std::make_unique<Worker>();
  MPI_CHECK(MPI_Op_create(&sum_16bit<c10::BFloat16>, /*commute=*/1, &bfloat16_sum_));
  MPI_CHECK(MPI_Op_create(&sum_16bit<c10::Half>, /*commute=*/1, &float16_sum_));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &world_size_));
  // Ranks sharing memory share a host; our rank among them is the local rank.
  // Works under mpirun and srun alike, without launcher-specific variables.
  MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &host_comm_));
  MPI_CHECK(MPI_Comm_set_errhandler(host_comm_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(host_comm_, &local_rank_));
  MPI_CHECK(MPI_Comm_size(host_comm_, &local_size_));
}

MpiCommunicator::~MpiCommunicator() {
  worker_.reset();  // finishes what is queued
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  MPI_Op_free(&bfloat16_sum_);
  MPI_Op_free(&float16_sum_);
  if (host_comm_ != MPI_COMM_NULL) MPI_Comm_free(&host_comm_);
}

MPI_Datatype MpiCommunicator::datatype_of(const at::Tensor& tensor) const {
  switch (tensor.scalar_type()) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    case at::kBFloat16:
    case at::kHalf: return MPI_UINT16_T;  // opaque 16-bit words for our own sum ops
    default:
      throw Error(std::string("MPI backend cannot communicate tensors of type ") +
                  c10::toString(tensor.scalar_type()));
  }
}

MPI_Op MpiCommunicator::op_for(const at::Tensor& tensor, ReduceOp op) const {
  const auto type = tensor.scalar_type();
  if (type == at::kBFloat16 || type == at::kHalf) {
    if (op != ReduceOp::Sum) throw Error("16-bit float tensors can only be all-reduced with Sum");
    return type == at::kBFloat16 ? bfloat16_sum_ : float16_sum_;
  }
  return mpi_op_of(op);
}

namespace {

class MpiWork final : public Work {
 public:
  // `then`: what to do once, when the request has completed.
  explicit MpiWork(MPI_Request request, std::function<void()> then = {}) : request_(request), then_(std::move(then)) {}
  ~MpiWork() override {
    // A Work dropped unfinished must still complete before its buffer dies.
    if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  void wait() override {
    MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE));
    completed();
  }
  bool test() override {
    int done = 0;
    MPI_CHECK(MPI_Test(&request_, &done, MPI_STATUS_IGNORE));
    if (done) completed();
    return done != 0;
  }

 private:
  void completed() {
    if (!then_) return;
    auto then = std::move(then_);
    then_ = nullptr;
    then();
  }
  MPI_Request request_;
  std::function<void()> then_;
};

}  // namespace

void MpiCommunicator::drain() {
  if (worker_) worker_->drain();
}

std::unique_ptr<Work> MpiCommunicator::do_all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  require_cpu(tensor);
  if (worker_) {
    const int count = checked_count(tensor);
    const MPI_Datatype type = datatype_of(tensor);
    const MPI_Op mpi_op = op_for(tensor, op);
    const MPI_Comm comm = comm_;
    // The job holds the tensor, so its memory lives until the collective ends.
    auto job = worker_->submit([tensor, count, type, mpi_op, comm] {
      MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, tensor.data_ptr(), count, type, mpi_op, comm));
    });
    return std::make_unique<WorkerWork>(worker_.get(), std::move(job));
  }
  MPI_Request request;
  MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, tensor.data_ptr(), checked_count(tensor), datatype_of(tensor),
                           op_for(tensor, op), comm_, &request));
  return std::make_unique<MpiWork>(request);
}

std::unique_ptr<Work> MpiCommunicator::do_reduce_scatter_async(at::Tensor& input, at::Tensor& output) {
  require_cpu(input);
  require_cpu(output);
  const int count = checked_count(output);
  const MPI_Datatype type = datatype_of(input);
  const MPI_Op mpi_op = op_for(input, ReduceOp::Sum);
  const MPI_Comm comm = comm_;
  // In place (Communicator::reduce_scatter_async), MPI leaves the result at
  // the front of the buffer: it moves to this rank's chunk afterwards.
  const bool in_place = output.data_ptr() != input.data_ptr() &&
                        output.data_ptr() == static_cast<char*>(input.data_ptr()) + rank_ * output.nbytes();
  const bool at_front = output.data_ptr() == input.data_ptr();  // rank 0 in place: already there
  auto run = [input, output, count, type, mpi_op, comm, in_place, at_front](MPI_Request* request) {
    const void* send = in_place || at_front ? MPI_IN_PLACE : input.data_ptr();
    void* receive = in_place || at_front ? input.data_ptr() : output.data_ptr();
    if (request) {
      MPI_CHECK(MPI_Ireduce_scatter_block(send, receive, count, type, mpi_op, comm, request));
    } else {
      MPI_CHECK(MPI_Reduce_scatter_block(send, receive, count, type, mpi_op, comm));
    }
  };
  auto move_to_chunk = [input, output, in_place] {
    if (in_place) std::memmove(output.data_ptr(), input.data_ptr(), output.nbytes());
  };
  if (worker_) {
    auto job = worker_->submit([run, move_to_chunk] {
      run(nullptr);
      move_to_chunk();
    });
    return std::make_unique<WorkerWork>(worker_.get(), std::move(job));
  }
  MPI_Request request;
  run(&request);
  return std::make_unique<MpiWork>(request, move_to_chunk);
}

std::unique_ptr<Work> MpiCommunicator::do_all_gather_async(at::Tensor& buffer) {
  require_cpu(buffer);
  const int count = checked_count(buffer) / world_size_;
  const MPI_Datatype type = datatype_of(buffer);
  const MPI_Comm comm = comm_;
  if (worker_) {
    auto job = worker_->submit([buffer, count, type, comm] {
      MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buffer.data_ptr(), count, type, comm));
    });
    return std::make_unique<WorkerWork>(worker_.get(), std::move(job));
  }
  MPI_Request request;
  MPI_CHECK(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buffer.data_ptr(), count, type, comm, &request));
  return std::make_unique<MpiWork>(request);
}

// The blocking calls below are watched (--collective-timeout) under these
// names unless the caller opened a scope with a better one.
void MpiCommunicator::barrier() {
  CollectiveWatchdog::Scope watched(watchdog(), "barrier");
  drain();
  MPI_CHECK(MPI_Barrier(comm_));
}

std::vector<int64_t> MpiCommunicator::all_gather(int64_t value) {
  std::vector<int64_t> values(world_size_);
  CollectiveWatchdog::Scope watched(watchdog(), "all-gather");
  drain();
  MPI_CHECK(MPI_Allgather(&value, 1, MPI_INT64_T, values.data(), 1, MPI_INT64_T, comm_));
  return values;
}

std::vector<std::vector<uint64_t>> MpiCommunicator::all_gather_on_host(const std::vector<uint64_t>& words) {
  std::vector<uint64_t> flat(words.size() * static_cast<size_t>(local_size_));
  CollectiveWatchdog::Scope watched(watchdog(), "all-gather among the host's ranks");
  drain();
  MPI_CHECK(MPI_Allgather(words.data(), static_cast<int>(words.size()), MPI_UINT64_T, flat.data(),
                          static_cast<int>(words.size()), MPI_UINT64_T, host_comm_));
  std::vector<std::vector<uint64_t>> gathered;
  for (int r = 0; r < local_size_; ++r) {
    gathered.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(r * words.size()),
                          flat.begin() + static_cast<std::ptrdiff_t>((r + 1) * words.size()));
  }
  return gathered;
}

void MpiCommunicator::do_all_reduce(at::Tensor& tensor, ReduceOp op) {
  require_cpu(tensor);
  CollectiveWatchdog::Scope watched(watchdog(), "all-reduce");
  drain();
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, tensor.data_ptr(), checked_count(tensor), datatype_of(tensor),
                          op_for(tensor, op), comm_));
}

void MpiCommunicator::do_broadcast(at::Tensor& tensor, int root) {
  require_cpu(tensor);
  CollectiveWatchdog::Scope watched(watchdog(), "broadcast");
  drain();
  MPI_CHECK(MPI_Bcast(tensor.data_ptr(), checked_count(tensor), datatype_of(tensor), root, comm_));
}

}  // namespace dtrain
