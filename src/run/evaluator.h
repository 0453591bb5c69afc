// Evaluation: loss and accuracy on the test split, the validation split and a
// fixed subset of the training split, each sharded across ranks without
// padding (every sample counts exactly once) with the sums all-reduced; when
// it is due (run/targets.h's schedule); and the --target it watches. Its state
// (the last evaluation, the target's) goes into checkpoints.
#pragma once
#include "cli/config.h"
#include "comm/communicator.h"
#include "data/batch_schedule.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "models/models.h"
#include "run/metrics_log.h"
#include "run/targets.h"

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dtrain {

// Token datasets: loss in nats per target token and next-token accuracy,
// both over target tokens (items); classification: per sample.
struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t samples = 0;
  int64_t items = 0;  // samples, or target tokens
};

// One evaluation of the splits it read (every split the dataset has, or
// only --target's under --eval-splits target).
struct Evaluation {
  EvalResult test, train, validation;
  bool has_test = false;
  bool has_validation = false;
  bool has_train = true;
  bool complete = true;  // every split the dataset has
};

class Evaluator {
 public:
  // Throws UsageError for a --target or --stop-at-target this dataset cannot serve.
  Evaluator(const Config& config, const Dataset& data, Communicator& comm, c10::Device device);

  // Loss and accuracy over `indices` of `split`, all ranks together (collective).
  EvalResult evaluate(Model& model, const Split& split, const std::vector<int64_t>& indices);
  // Every split this rank holds a shard of; with `all` false under
  // --eval-splits target, only the split --target reads (collective).
  Evaluation evaluate_all(Model& model, bool all = true);

  // Whether the run evaluates after `steps_done` steps (not counting the
  // last step, which always evaluates).
  bool due(const RunPosition& position) const;
  // Evaluates, prints the line (rank 0), records the "eval" event and, the
  // first time the --target is met, the "target" event (collective). Under
  // --eval-splits target, only the target's split unless `final`, or unless
  // this evaluation stops the run at its target (then all of them).
  void evaluate_and_log(Model& model, const RunPosition& position, double elapsed_seconds, MetricsLog& log,
                        bool final);
  // Whether the last evaluation was after `steps_done` steps and read every split.
  bool complete_at(int64_t steps_done) const;
  // The same without a record (a run that trained no step evaluates its
  // given weights for its summary).
  void evaluate_unlogged(Model& model, const RunPosition& position);

  // The last "eval" event (null before the first).
  const nlohmann::json& last() const { return last_; }
  // --stop-at-target and the target was met.
  bool stop_at_target() const { return stop_at_target_; }
  const TargetTracker& target() const { return target_; }

  // Checkpoints: the last evaluation and the target's state. restore()
  // calls `warn` when the checkpoint was written for another target.
  nlohmann::json target_state() const { return target_.state(); }
  void restore(const nlohmann::json& last_eval, const nlohmann::json& target_state,
               const std::function<void(const std::string& other_target)>& warn);

 private:
  nlohmann::json event(const Evaluation& evaluation, const RunPosition& position) const;
  // Element-wise SUM across ranks (collective).
  std::vector<double> all_reduce_sums(const std::vector<double>& values);

  const Config& config_;
  const Dataset& data_;
  Communicator& comm_;
  c10::Device device_;
  std::vector<int64_t> test_shard_;        // this rank's test indices
  std::vector<int64_t> validation_shard_;  // this rank's validation indices
  std::vector<int64_t> train_shard_;       // this rank's part of the fixed train subset
  nlohmann::json last_;
  TargetTracker target_;
  bool stop_at_target_ = false;
};

}  // namespace dtrain
