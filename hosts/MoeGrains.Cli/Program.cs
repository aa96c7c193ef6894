using System.CommandLine;
using MoeGrains.Cli.Commands;

var root = new RootCommand("moe: run mixture-of-experts models on a Microsoft Orleans cluster")
{
    ServeCommands.Serve(),
    ServeCommands.Silo(),
    PluginsCommand.Create(),
    CheckpointCommand.Create(),
    DemoCommand.Create(),
    LanguageModelDemoCommand.Create(),
    BenchCommands.Create(),
    GenerateCommand.Create(),
    TrainCommand.Create(),
    RetrievalCommands.Eval(),
    RetrieveCommand.Create(),
    PlaceCommand.Create(),
    DiffusionCommands.Create(),
};
RoutingEvalCommand.Register(root);
PlacementBenchCommand.Register(root);
ReplicationBenchCommand.Register(root);
return await root.Parse(args).InvokeAsync();
