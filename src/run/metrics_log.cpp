// The JSONL writer and the run's JSON files, written atomically by rank 0.
#include "run/metrics_log.h"

#include "common/error.h"
#include "io/files.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

namespace dtrain {

MetricsLog::MetricsLog(const std::string& out_dir, bool enabled, int64_t keep_bytes)
    : out_dir_(out_dir), enabled_(enabled) {
  if (!enabled_) return;
  std::error_code error;
  if (std::filesystem::exists(out_dir_, error) && !std::filesystem::is_directory(out_dir_, error)) {
    throw Error("--out-dir " + out_dir_ + " is a file, not a folder; give a folder path");
  }
  std::filesystem::create_directories(out_dir_, error);
  if (error) throw Error("cannot create --out-dir " + out_dir_ + ": " + error.message());
  const std::string path = out_dir_ + "/metrics.jsonl";
  if (keep_bytes >= 0) {
    const auto size = std::filesystem::file_size(path, error);
    if (!error && static_cast<int64_t>(size) >= keep_bytes) {
      // Records written after the checkpoint (by a run killed later) go.
      std::filesystem::resize_file(path, static_cast<uintmax_t>(keep_bytes), error);
      if (error) throw Error("cannot trim " + path + " to the checkpoint's records: " + error.message());
      events_.open(path, std::ios::app);
      bytes_ = keep_bytes;
    } else {
      note_ = path + " does not hold the records up to the checkpoint (another --out-dir?): it starts afresh";
      events_.open(path, std::ios::trunc);
    }
  } else {
    events_.open(path, std::ios::trunc);
  }
  if (!events_) throw Error(io_failure("write", path));
}

void MetricsLog::record(const nlohmann::json& event) {
  if (!enabled_) return;
  const std::string line = event.dump() + "\n";
  events_ << line;
  bytes_ += static_cast<int64_t>(line.size());
  events_.flush();  // a crash or preemption keeps everything logged so far
  if (!events_) throw Error(io_failure("write", out_dir_ + "/metrics.jsonl"));
}


void MetricsLog::write_json(const std::string& file_name, const nlohmann::json& value) const {
  if (!enabled_) return;
  write_file_atomically(out_dir_ + "/" + file_name, value.dump(2) + "\n");
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t total = std::llround(seconds);
  char text[32];
  if (total >= 3600) {
    std::snprintf(text, sizeof text, "%lld:%02lld:%02lld", static_cast<long long>(total / 3600),
                  static_cast<long long>(total / 60 % 60), static_cast<long long>(total % 60));
  } else {
    std::snprintf(text, sizeof text, "%lld:%02lld", static_cast<long long>(total / 60),
                  static_cast<long long>(total % 60));
  }
  return text;
}

}  // namespace dtrain
