"""DVC stage: train PacGAN's released mode counter when the pipeline counts Stacked MNIST modes; otherwise
write a marker in its place, so the default MNIST pipeline skips its training (about 15-25 minutes on 2 CPU cores)."""

from pipeline.common import atomic, cpu_threads, layout
from pipeline.common.console import progress_bar, run_main
from pipeline.common.params import load_params
from pipeline.data.mnist import load_prepared
from pipeline.instrument import evaluator, mode_counter


def main() -> None:
    params = load_params()
    if params.dataset != "stacked-mnist":
        reason = f"dataset is {params.dataset}: only a Stacked MNIST mode count reads this classifier"
        mode_counter.save_marker(layout.MODE_COUNTER, reason)
        atomic.write_json(layout.MODE_COUNTER_METRICS, {"trained": False, "reason": reason})
        print(f"mode counter not trained ({reason})")
        return
    cpu_threads.use(params.evaluator.threads)
    data = load_prepared(layout.PREPARED)
    x, y = mode_counter.training_digits(data.x_train, data.y_train, params.mode_counter)
    with progress_bar() as bar:
        task = bar.add_task("train PacGAN's mode counter", total=None)
        model = mode_counter.train_counter(
            x, y, params.mode_counter, on_step=lambda done, total: bar.update(task, completed=done, total=total)
        )
    test_predicted = evaluator.embed(model, data.x_test).predicted
    accuracy = float((test_predicted == data.y_test).mean())
    mode_counter.save(model, layout.MODE_COUNTER, test_predicted)
    atomic.write_json(layout.MODE_COUNTER_METRICS, {"trained": True, "digits": len(x), "test_accuracy": round(accuracy, 5)})
    print(f"mode counter test accuracy: {accuracy:.4f} (trained on {len(x)} digits)")


if __name__ == "__main__":
    run_main(main)
