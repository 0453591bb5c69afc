#include "ddp/finite_check.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace dtrain {

namespace {

// Pieces of 64 Ki floats (256 KiB): small enough that the helper and the
// caller share out the last gradient, large enough that the lock is rare.
constexpr size_t kPiece = size_t{1} << 16;

}  // namespace

bool floats_all_finite(const float* data, size_t count) {
  // A float is NaN or Inf exactly when its exponent bits are all ones. The
  // loop has no early exit and no float arithmetic, so the compiler
  // vectorizes it; blocks keep the early exit for a damaged gradient cheap.
  constexpr uint32_t kExponent = 0x7f800000u;
  constexpr size_t kBlock = 4096;
  for (size_t start = 0; start < count; start += kBlock) {
    const size_t end = std::min(count, start + kBlock);
    uint32_t all_ones = 0;
    for (size_t i = start; i < end; ++i) {
      uint32_t bits;
      std::memcpy(&bits, data + i, sizeof bits);
      all_ones |= static_cast<uint32_t>((bits & kExponent) == kExponent);
    }
    if (all_ones != 0) return false;
  }
  return true;
}

FiniteCheck::FiniteCheck() : helper_([this] { helper_loop(); }) {}

FiniteCheck::~FiniteCheck() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    queue_.clear();
  }
  work_ready_.notify_all();
  helper_.join();
}

void FiniteCheck::submit(const float* data, size_t count) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t at = 0; at < count; at += kPiece) queue_.push_back({data + at, std::min(kPiece, count - at)});
  }
  work_ready_.notify_one();
}

bool FiniteCheck::check_one(std::unique_lock<std::mutex>& lock) {
  if (queue_.empty()) return false;
  const Span span = queue_.front();
  queue_.pop_front();
  ++in_hand_;
  const bool skip = non_finite_;  // the verdict is known: the rest need no look
  lock.unlock();
  const bool finite = skip || floats_all_finite(span.data, span.count);
  lock.lock();
  --in_hand_;
  if (!finite) non_finite_ = true;
  return true;
}

void FiniteCheck::helper_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    work_ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    while (check_one(lock)) {
    }
    if (in_hand_ == 0) work_done_.notify_all();
  }
}

bool FiniteCheck::all_finite() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (check_one(lock)) {
  }
  work_done_.wait(lock, [this] { return in_hand_ == 0; });
  const bool finite = !non_finite_;
  non_finite_ = false;
  return finite;
}

}  // namespace dtrain
