// The non-finite gradient check, overlapped with backward (world size 1, CPU).
//
// At world size 1 nothing is communicated, so the all-reduced gradient is the
// local one, final for each parameter as soon as its last micro-step's
// AccumulateGrad has run. The reducer hands each such gradient to this check,
// which scans it for NaN and Inf on a helper thread while backward computes
// the rest; whatever is left when backward ends (the last gradients, those of
// the first layers) is shared between the helper and the waiting caller.
// The verdict is exact: every element's exponent bits, no sum that could
// overflow. Protocol, per optimizer step:
//   submit(span) for each final gradient (from backward hooks, any order);
//   all_finite();  // the verdict on everything submitted since the last one
// The spans must not be written between submit() and all_finite().
#pragma once
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>

namespace dtrain {

// Whether all `count` floats at `data` are finite (no NaN, no Inf).
bool floats_all_finite(const float* data, size_t count);

class FiniteCheck {
 public:
  FiniteCheck();
  ~FiniteCheck();  // waits for the span in hand, then stops the helper
  FiniteCheck(const FiniteCheck&) = delete;
  FiniteCheck& operator=(const FiniteCheck&) = delete;

  // Queues `count` floats at `data` for checking (in pieces small enough to
  // share out).
  void submit(const float* data, size_t count);
  // Checks what is still queued together with the helper, waits for the
  // helper's piece; true if every element submitted since the last call was
  // finite. Starts the next round.
  bool all_finite();

 private:
  struct Span {
    const float* data;
    size_t count;
  };
  void helper_loop();
  // Takes one queued span and checks it, with `lock` released meanwhile;
  // false if the queue was empty.
  bool check_one(std::unique_lock<std::mutex>& lock);

  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  std::deque<Span> queue_;
  size_t in_hand_ = 0;  // spans taken but not yet checked
  bool non_finite_ = false;
  bool stopping_ = false;
  std::thread helper_;
};

}  // namespace dtrain
