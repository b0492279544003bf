"""Score edited videos with the LOVEU-TGVE-2023 benchmark's metrics: CLIP frame consistency and text alignment
(openai/clip-vit-large-patch14 in the benchmark) and, with a PickScore model, PickScore.

    python -m tuneavideo_ms.evaluate --clip_model_path DIR_OR_HUB_ID --video edit.mp4 --prompt "a surfer"
    python -m tuneavideo_ms.evaluate --clip_model_path DIR_OR_HUB_ID --outputs RUN_OR_EDIT_DIR

--video is a GIF, an MP4 or a folder of frames (the benchmark's *.jpg layout); --outputs scores every video
of a tuning run's samples/ or of tuneavideo-edit's output folder, with its prompt from prompts.json.
"""
import argparse
import json
import logging
import os
import sys

from .arguments import HelpFormatter, add_device_arguments, add_pickscore_arguments, number


def parse_args(argv=None, prog=None):
    """The options; `prog` names the command in messages (by default the script's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--clip_model_path", required=True, help="a CLIP model folder (transformers) or Hub id")
    p.add_argument("--video", default=None, help="a GIF, an MP4 or a folder of frames")
    p.add_argument("--prompt", default=None, help="the prompt --video was edited with")
    p.add_argument("--outputs", default=None,
                   help="a folder holding prompts.json and its videos (tuneavideo-edit's output), or folders "
                        "of them (a tuning run's output_dir or its samples/)")
    add_pickscore_arguments(p)
    p.add_argument("--resize", type=number(int, 1), default=480,
                   help="frames are resized to this square first")
    p.add_argument("--json", default=None, help="write the scores to this JSON file")
    add_device_arguments(p)
    args = p.parse_args(argv)
    if (args.video is None) == (args.outputs is None):
        p.error("give --video (with --prompt) or --outputs")
    if args.video is not None and args.prompt is None:
        p.error("--video needs --prompt, the prompt it was edited with")
    return args


def edited_videos(outputs):
    """[(path, prompt)] of every video under `outputs` that a prompts.json names (tuneavideo-edit's layout:
    <stem>.mp4 / <stem>.gif and prompts.json mapping stems to prompts); the MP4 where both exist."""
    if not os.path.isdir(outputs):
        raise FileNotFoundError(f"--outputs {outputs}: not a folder")
    videos = []
    for root, dirs, files in os.walk(outputs):
        dirs.sort()
        if "prompts.json" not in files:
            continue
        try:
            with open(os.path.join(root, "prompts.json")) as f:
                prompts = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{os.path.join(root, 'prompts.json')}: not valid JSON ({e})") from None
        for stem, prompt in prompts.items():
            found = [os.path.join(root, stem + ext) for ext in (".mp4", ".gif")
                     if os.path.isfile(os.path.join(root, stem + ext))]
            if not found:
                raise FileNotFoundError(f"{root}: prompts.json names {stem!r}, but neither {stem}.mp4 nor "
                                        f"{stem}.gif is there")
            videos.append((found[0], prompt))
    if not videos:
        raise FileNotFoundError(f"--outputs {outputs}: no prompts.json under it (tuneavideo-edit writes one "
                                "beside its videos; a tuning run, one per samples/sample-<step>/)")
    return videos


def main(argv=None, prog=None):
    """tuneavideo-evaluate, and python -m tuneavideo_ms.evaluate (which passes its `prog`)."""
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        scores = run(args)
    except (ValueError, OSError) as e:  # bad input: a path, a video, a model folder; the message says which
        sys.exit(f"{prog or os.path.basename(sys.argv[0])}: {e}")
    if args.json:
        from ..atomic import atomic_file
        with atomic_file(args.json) as tmp, open(tmp, "w") as f:
            json.dump(scores, f, indent=2, ensure_ascii=False)
        print(f"scores written to {args.json}")


def run(args):
    from ..data import read_frames
    from ..metrics import check_frame_count, check_metric_models, check_prompt, format_scores, mean_scores

    # every input checked and every video read before a model loads
    check_metric_models(args.clip_model_path, args.pickscore_model_path, args.pickscore_processor_path)
    jobs = [(args.video, args.prompt)] if args.video else edited_videos(args.outputs)
    for _, prompt in jobs:
        check_prompt(prompt)
    clips = []
    for path, prompt in jobs:
        frames = read_frames(path)
        check_frame_count(len(frames), path)
        clips.append((path, prompt, frames))

    from .. import runtime
    from ..metrics import VideoEvaluator
    runtime.setup(args.device, args.mode)
    evaluate = VideoEvaluator(args.clip_model_path, args.pickscore_model_path, args.pickscore_processor_path,
                              args.resize)
    if args.video:
        scores = evaluate(clips[0][2], args.prompt)
        for name, value in scores.items():
            print(f"{name}: {value:.4f}")
        return scores
    rows = []
    for path, prompt, frames in clips:
        video = os.path.relpath(path, args.outputs)
        rows.append(dict(video=video, prompt=prompt, **evaluate(frames, prompt)))
        print(f"{rows[-1]['video']}  {format_scores(rows[-1])}  ({prompt})")
    mean = mean_scores(rows)
    print(f"mean over {len(rows)} videos: {format_scores(mean)}")
    return {"videos": rows, "mean": mean}


if __name__ == "__main__":
    main()
