// Holds every variant of a portfolio loaded at once and answers protocol requests.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <nlohmann/json.hpp>

#include "manifest.h"
#include "protocol.h"

namespace shifter {

// A valid request that could not be carried out (unknown variant, unreadable input file, ...).
class CommandError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct RunnerOptions {
  std::string precision = "fp32";
  std::vector<std::string> only_variants;  // empty = all
  Verify verify = Verify::Sha256;
  bool isolate = true;    // trial-load each variant in a child process first (isolated_check.h)
  uint32_t threads = 0;   // the thread pool size given on the command line, 0 = default
};

struct LoadedVariant {
  std::string name;
  std::string path;
  uint64_t bytes = 0;
  std::unique_ptr<executorch::extension::Module> module;
  double verify_ms = 0;
  double check_ms = 0;        // the isolated trial load, 0 when isolation is off or unavailable
  double load_ms = 0;         // Module construction + program load + load_method("forward")
  double first_infer_ms = 0;  // first forward right after loading
};

// A variant of the manifest that could not be loaded, and why (the error names the remedy).
struct LoadFailure {
  std::string name;
  std::string error;
};

// Whether variants are trial-loaded in a child process first (isolated_check.h).
enum class Isolation { Subprocess, Off, Unavailable };

// The deterministic input used when a request names no input file:
// x[i] = float((i * 37) % 101) / 50 - 1, computed in float32 (C order).
void fill_pattern(std::vector<float>& values);

class Runner {
 public:
  // Verifies and loads every usable variant of the portfolio; a variant that cannot be used is
  // recorded in failures(), not thrown.
  static std::unique_ptr<Runner> load(std::string portfolio_dir, Manifest manifest, RunnerOptions options);

  nlohmann::json ready_event(double startup_ms) const;
  // Answers one parsed request with the fields of a successful response (without "ok", "cmd"
  // and "id"). Throws CommandError when it cannot be carried out.
  nlohmann::json handle(const Request& request);

  bool empty() const { return variants_.empty(); }
  const std::vector<std::unique_ptr<LoadedVariant>>& variants() const { return variants_; }
  const std::vector<LoadFailure>& failures() const { return failures_; }

 private:
  // Construction only: the input buffer; nothing is read until load().
  Runner(std::string portfolio_dir, Manifest manifest, RunnerOptions options);

  // Loading, in order: the files write_output must never touch, then every wanted variant.
  void protect_portfolio_files();
  void load_variants();
  bool wanted(const VariantFile& file) const;
  // Each throws VariantError naming the problem and the remedy.
  std::unique_ptr<LoadedVariant> load_variant(VariantFile& file);
  double trial_load(const VariantFile& file);  // the isolated check; its ms, 0 when not run
  std::unique_ptr<LoadedVariant> open_program(const VariantFile& file);
  void check_forward_input(const VariantFile& file, executorch::extension::Module& module) const;
  std::string isolation_text() const;

  LoadedVariant& resolve(const std::string& name);  // "" = current variant
  LoadedVariant* activate(const std::string& name);
  // Runs forward `runs` times on the input buffer, returning each latency in ms; keeps the
  // last output in last_output_.
  std::vector<double> run(LoadedVariant& variant, int64_t runs);
  double first_inference_ms(LoadedVariant& variant);

  // infer's files: a regular input file of exactly the input's size; a regular output file outside
  // the portfolio (never the manifest or a program, whatever links lead there), written in full.
  void read_input(const std::string& path);
  void write_output(const std::string& path);

  nlohmann::json do_switch(const Request& request);
  nlohmann::json infer(const Request& request);
  nlohmann::json bench(const Request& request);
  nlohmann::json bench_reload(const Request& request);
  nlohmann::json stats() const;

  std::string portfolio_dir_;
  std::string portfolio_root_;  // portfolio_dir_ with links resolved
  std::set<std::pair<uint64_t, uint64_t>> protected_files_;  // (device, inode) of manifest and programs
  Manifest manifest_;
  RunnerOptions options_;
  std::vector<float> input_;
  executorch::extension::TensorPtr input_tensor_;
  std::vector<float> last_output_;
  std::vector<int64_t> last_output_shape_;
  std::vector<std::unique_ptr<LoadedVariant>> variants_;  // manifest order
  std::map<std::string, LoadedVariant*> by_name_;
  LoadedVariant* current_ = nullptr;
  std::vector<LoadFailure> failures_;  // manifest order
  Isolation isolation_;
  std::string isolation_problem_;  // why isolation is Unavailable
  int64_t inferences_ = 0;
};

}  // namespace shifter
