// The moe-eplb tool. Exit status: 0 on success, 1 on any error (a usage
// error, a bad file or value, an invalid table), with one line on stderr
// that starts "moe-eplb: error: ". --help and --version exit 0.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "options.hpp"

#ifndef MOE_EPLB_VERSION
#error "the build defines MOE_EPLB_VERSION (tools/CMakeLists.txt)"
#endif

namespace {

int fail(const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "moe-eplb: error: %s\n", message.c_str());
  return 1;
}

// The subcommand argv names, or "" when argv names none or a known one.
std::string unknown_command(const CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return "";
  for (const CLI::App* command : app.get_subcommands(std::function<bool(const CLI::App*)>{})) {
    if (command->check_name(argv[1])) return "";
  }
  return argv[1];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "moe-eplb: map logical MoE expert ids to physical replicas (EPLB); plan, validate and "
      "simulate tables. Exit status 0 on success, 1 on any error."};
  app.set_version_flag("--version", "moe-eplb " MOE_EPLB_VERSION);
  app.require_subcommand(1);
  moe_eplb::cli::add_map_command(app);
  moe_eplb::cli::add_validate_command(app);
  moe_eplb::cli::add_record_command(app);
  moe_eplb::cli::add_plan_command(app);
  moe_eplb::cli::add_simulate_command(app);
  moe_eplb::cli::add_convert_command(app);
  moe_eplb::cli::add_demo_command(app);
  moe_eplb::cli::add_diff_command(app);
  moe_eplb::cli::add_replay_command(app);
  const std::string commands = moe_eplb::cli::command_names(app);
  const std::string unknown = unknown_command(app, argc, argv);
  if (!unknown.empty()) {
    return fail("unknown command '" + unknown + "'; expected one of: " + commands +
                " (moe-eplb --help)");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& done) {  // --help, --version: printed, exit 0
    return app.exit(done);
  } catch (const CLI::RequiredError& error) {
    if (app.get_subcommands().empty()) {
      const std::string given =
          argc < 2 ? "no command given" : "'" + std::string(argv[1]) + "' is not a command";
      return fail(given + "; expected one of: " + commands + " (moe-eplb --help)");
    }
    return fail(std::string(error.what()) + " (moe-eplb " + app.get_subcommands()[0]->get_name() +
                " --help)");
  } catch (const CLI::ParseError& error) {
    const std::string help =
        app.get_subcommands().empty() ? "" : " " + app.get_subcommands()[0]->get_name();
    return fail(std::string(error.what()) + " (moe-eplb" + help + " --help)");
  } catch (const std::exception& error) {  // moe_eplb::Error and the rest
    return fail(error.what());
  }
  return 0;
}
