// What a batch-size study measures of a run (docs/studies.md): when it is
// evaluated, and the first evaluation that meets its --target.
//
// Steps-to-target is only as fine as the evaluations. A geometric schedule
// (--eval-schedule geometric:K) evaluates at the steps ceil(2^(j/K)), about K
// per doubling, so a 30-step large-batch run and a 3000-step small-batch run
// both get steps-to-target within a factor 2^(1/K) (K = 16: 4.4%).
#pragma once
#include "cli/config.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace dtrain {

// Whether the run evaluates after `steps_done` steps: at each epoch's end,
// every `eval_every` steps (0: never) and on the geometric grid (0: none).
// (The trainer also evaluates its last step.) Pure: a resumed run evaluates
// at the same steps.
bool evaluation_due(int64_t steps_done, bool epoch_ended, int64_t eval_every, int64_t per_doubling);

// The first evaluation that meets the target. Lower is better for losses,
// higher for accuracies.
class TargetTracker {
 public:
  explicit TargetTracker(Target target) : target_(std::move(target)) {}
  bool enabled() const { return !target_.metric.empty(); }
  // Looks at one "eval" event (its keys: val_accuracy, test_loss,
  // train_eval_loss, ...). True the first time the target is met.
  bool observe(const nlohmann::json& eval_event, int64_t steps_done, int64_t samples_seen);
  bool reached() const { return steps_ >= 0; }
  // summary.json's "target", "steps_to_target", "samples_to_target" (null
  // when not reached).
  void describe(nlohmann::json& summary) const;
  // For checkpoints. restore ignores a state written for another target and
  // then returns false (true otherwise, also when there is nothing to restore).
  nlohmann::json state() const;
  bool restore(const nlohmann::json& state);

 private:
  std::string text() const;
  Target target_;
  int64_t steps_ = -1;
  int64_t samples_ = -1;
};

}  // namespace dtrain
