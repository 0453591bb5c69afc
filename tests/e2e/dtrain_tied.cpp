// Test helper for the shared-parameter test (tests/e2e/tied.sh): trains the
// tied model of tests/tied_model.h on 16 synthetic samples for 3 steps with
// dtrain's Trainer, under mpirun, with the batch options given (e.g.
// --micro-batch-size 4 --global-batch-size 16 on 2 ranks: accumulation 2).
// Rank 0 writes OUT_DIR/{data,initial,final}.pt for the PyTorch reference.
// Usage: dtrain_tied OUT_DIR [dtrain options]
#include "cli/options.h"
#include "comm/mpi_communicator.h"
#include "data/dataset.h"
#include "io/weights.h"
#include "tied_model.h"
#include "data/batch_plan.h"
#include "train/trainer.h"

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  using namespace dtrain;
  if (argc < 2) {
    std::cerr << "usage: dtrain_tied OUT_DIR [dtrain options]\n";
    return 2;
  }
  MpiSession session(&argc, &argv);
  MpiCommunicator comm;
  try {
    const std::string out = argv[1];
    const Config config = parse_options(std::vector<std::string>(argv + 2, argv + argc)).config;
    const BatchPlan plan = derive_batch_plan(config.batch.micro_batch_size, config.batch.grad_accum_steps,
                                             config.batch.global_batch_size, comm.world_size());
    const Dataset data = make_synthetic(16, 8, 4, /*seed=*/5);
    torch::manual_seed(config.run.seed + 100 * comm.rank());  // ranks differ until the broadcast
    auto model = std::make_shared<testing::TiedMlp>(784, 12, 4);
    Trainer trainer(config, plan, comm, data, model);
    trainer.broadcast_initial_state();
    if (comm.rank() == 0) {
      save_weights({{"inputs", data.train.inputs}, {"targets", data.train.targets}}, out + "/data.pt");
      save_weights(model_state(*model), out + "/initial.pt");
    }
    for (int step = 0; step < 3; ++step) trainer.train_step(step);
    if (comm.rank() == 0) save_weights(model_state(*model), out + "/final.pt");
  } catch (const std::exception& e) {
    std::cerr << "dtrain_tied: error: " << e.what() << "\n";
    MpiSession::abort_world(1);
  }
  return 0;
}
