#include <cstdio>
#include <exception>

#include "commands.hpp"
#include "moe_eplb/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "moe-eplb: map logical MoE expert ids to physical replicas (EPLB); plan, validate and "
      "simulate tables"};
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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  } catch (const moe_eplb::Error& error) {
    std::fprintf(stderr, "moe-eplb: error: %s\n", error.what());
    return 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "moe-eplb: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
