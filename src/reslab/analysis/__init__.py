"""Why residual learning works: layer responses, lesions, gradient flow, shattered gradients.

uv run reslab analyze responses --model plain20 --model resnet20 --limit 1000 --out runs/analysis
"""
