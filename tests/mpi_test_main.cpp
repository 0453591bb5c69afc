// GoogleTest main for tests that run under mpirun with any number of ranks.
// Rank 0 prints the usual report; other ranks print only their failures,
// prefixed by the rank. The exit code is non-zero on every rank if any rank
// failed, so mpirun and ctest see one verdict.
#include "comm/mpi_communicator.h"
#include "comm/placement.h"
#include "test_world.h"

#include <gtest/gtest.h>

#include <memory>

namespace {

std::unique_ptr<dtrain::MpiCommunicator> g_world;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.summary());
  }

 private:
  int rank_;
};

}  // namespace

namespace dtrain::testing {
Communicator& world() { return *g_world; }

bool every_rank_has_a_gpu() {
  const int64_t mine = nccl_compiled() && world().local_rank() < usable_gpu_count() ? 1 : 0;
  for (int64_t has : world().all_gather(mine)) {
    if (!has) return false;
  }
  return true;
}
}  // namespace dtrain::testing

int main(int argc, char** argv) {
  dtrain::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  g_world = std::make_unique<dtrain::MpiCommunicator>();
  if (g_world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(g_world->rank()));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  const auto all = g_world->all_gather(failed);
  for (int64_t f : all) failed = failed || f != 0;
  g_world.reset();
  return failed;
}
