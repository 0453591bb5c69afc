// The optimizer step of a run (trainer.h step 5), whole or sharded (ZeRO-1,
// ddp/reducer.h). Unsharded, the torch optimizer steps every parameter on
// every rank. Sharded, it steps only this rank's pieces of them (so it holds
// state for about 1/world of the parameters), and the updated pieces are
// all-gathered. The optimizer state leaves and enters as whole tensors by
// parameter name (optim/optimizer.h): gathered from the ranks' pieces to
// write, cut into pieces to read. So a checkpoint's optimizer.pt is the same
// file either way, and a run resumes sharded or not, at any world size.
#pragma once
#include "cli/config.h"
#include "common/fault.h"
#include "io/weights.h"
#include "optim/optimizer.h"

#include <cstdint>
#include <memory>
#include <string>

namespace torch::optim {
class Optimizer;
}

namespace dtrain {

class Communicator;
class GradientReducer;
struct TensorPieces;

class Updater {
 public:
  // `parameters`: the model's trainable parameters, in the reducer's order
  // (models/models.h named_trainable_parameters). Sharded when the reducer is.
  // `fused`: AdamW takes LibTorch's fused step (optim/optimizer.h).
  Updater(const OptimizerOptions& options, const NamedParameters& parameters, GradientReducer& reducer,
          Communicator& comm, double lr, bool fused = false);
  ~Updater();

  void set_lr(double lr);
  // The update of (0-based) step `step`; sharded, then the parameters'
  // all-gather (collective).
  void step(int64_t step);

  // The whole optimizer state, by parameter name, on the CPU. Collective when
  // sharded: every rank calls it.
  NamedTensors state();
  // Restores what state() gave, on any world size. Throws Error naming
  // `source` and the first entry that does not fit.
  void load(const NamedTensors& state, const std::string& source);

  bool sharded() const;
  // Whether the step is LibTorch's fused AdamW kernel.
  bool fused() const { return fused_; }
  // Whether the optimizer made state yet (after a first step or a load).
  bool has_state() const;
  // Bytes of this rank's state tensors (sharded: its pieces' only).
  int64_t local_state_bytes() const;
  // Seconds spent in the parameters' all-gather: the communication a sharded
  // step adds after the optimizer, which no backward hides.
  double gather_seconds() const { return gather_seconds_; }

 private:
  OptimizerOptions options_;
  NamedParameters parameters_;
  GradientReducer& reducer_;
  Communicator& comm_;
  NamedParameters pieces_;  // sharded: this rank's pieces, named NAME@OFFSET
  std::unique_ptr<TensorPieces> layout_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  double gather_seconds_ = 0;
  bool fused_ = false;
  FaultHook fault_exit_{"DTRAIN_FAULT_EXIT", "allgather"};  // tests: die just before the all-gather
};

}  // namespace dtrain
