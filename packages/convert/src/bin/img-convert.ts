#!/usr/bin/env node
import { processIo } from '../cli/common.js';
import { convertMain } from '../cli/img-convert.js';

process.exitCode = await convertMain('img-convert', process.argv.slice(2), processIo);
