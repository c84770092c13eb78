# A training loop of its own around deepspeed.initialize (no HF Trainer, no Accelerator): what the FAI-RL
# thread's early zero.Init path amounts to. Read by `dsadvise check --script`, never run.
import deepspeed

engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config="FAI-RL-70_auto_plain.json")
for batch in loader:
    loss = engine(batch)
    engine.backward(loss)
    engine.step()
